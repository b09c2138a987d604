"""Which kernel and which pipeline shape or launch config serve which call, and which Triton
tuning class a call falls in (no GPU needed: the choice is made in Python before any launch)."""
import pytest
import torch

from megatron_rcm.kernels import flash_jvp
from megatron_rcm.kernels.flash_jvp import (PINNED_CONFIGS, SHORT_KEYS, Route, _size_class, flash_jvp_hopper,
                                            hopper_config, launch_config, route)

pytestmark = pytest.mark.skipif(flash_jvp_hopper is None, reason="needs Triton with Gluon")


def test_every_kind_of_call_has_a_candidate_config_that_fits_it():
    assert set(flash_jvp_hopper.CONFIGS) == {(True, False), (False, False), (True, True), (False, True)}
    for (kv_tangent, _), config in flash_jvp_hopper.CONFIGS.items():
        assert config in flash_jvp_hopper.CANDIDATES
        assert flash_jvp_hopper.fits(config, 128, kv_tangent) and flash_jvp_hopper.fits(config, 64, kv_tangent)


def test_calls_with_up_to_short_keys_take_the_short_keys_config(monkeypatch):
    configs = {kind: flash_jvp_hopper.HopperConfig(64, 16 * i, 1) for i, kind in enumerate(flash_jvp_hopper.CONFIGS)}
    monkeypatch.setattr(flash_jvp_hopper, "CONFIGS", configs)
    for seqlen_k, short in ((226, True), (SHORT_KEYS, True), (SHORT_KEYS + 1, False), (32760, False)):
        for kv_tangent in (True, False):
            assert hopper_config(seqlen_k, kv_tangent) is configs[(kv_tangent, short)]


def test_shared_memory_of_a_config_counts_key_tangent_tiles_only_when_there_are_tangents():
    config = flash_jvp_hopper.HopperConfig(64, 64, 2)
    assert config.shared_memory_bytes(128, kv_tangent=False) == 96 * 1024  # two such CTAs share an SM
    assert config.shared_memory_bytes(128, kv_tangent=True) == 160 * 1024
    assert not flash_jvp_hopper.fits(flash_jvp_hopper.HopperConfig(128, 64, 3), 128, kv_tangent=True)
    assert flash_jvp_hopper.fits(flash_jvp_hopper.HopperConfig(128, 64, 3), 128, kv_tangent=False)


def test_a_config_beyond_shared_memory_is_refused_before_launch():
    q = torch.zeros(1, 1, 64, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="KiB of shared memory"):
        flash_jvp_hopper.launch(q, q, q, q, q, q, 0.1, flash_jvp._empty_outputs(q, q),
                                flash_jvp_hopper.HopperConfig(128, 64, 3))


@pytest.mark.parametrize("seqlen_q,seqlen_k,size_class", [
    (64, 64, 0), (1000, 1000, 0), (32760, 32760, 1), (8190, 8190, 1), (32760, 512, 2), (20001, 226, 2),
    (4096, SHORT_KEYS, 2), (4096, SHORT_KEYS + 1, 1), (100, 226, 0)])
def test_triton_tuning_classes_keep_short_keys_apart_from_long_ones(seqlen_q, seqlen_k, size_class):
    """Cross-attention to text (few key blocks per program) is tuned on its own, not given the
    config that self-attention at 32k tokens picked."""
    assert _size_class(seqlen_q, seqlen_k) == size_class


HOPPER, BF16 = (9, 0), torch.bfloat16


def test_self_attention_on_hopper_goes_to_the_hopper_kernel():
    for dtype in (torch.bfloat16, torch.float16):
        for kv_tangent in (True, False):
            assert route(HOPPER, dtype, 128, 32760, kv_tangent, False) == Route("hopper", hopper_config(32760, kv_tangent))
    assert route(HOPPER, BF16, 64, 1100, True, False) == Route("hopper", hopper_config(1100, True))


@pytest.mark.parametrize("seqlen_k,kv_tangent,config", [
    (512, True, (128, 64, 8, 2)), (226, True, (128, 64, 8, 2)),
    (512, False, (128, 64, 8, 2)), (226, False, (64, 32, 4, 2))])
def test_cross_attention_on_hopper_goes_to_the_triton_kernel_at_the_sweeps_config(seqlen_k, kv_tangent, config):
    """The fastest Triton config of tools/tune_flash_jvp.py's H200 sweep for each cross-attention case,
    pointers (no tensor descriptors), bf16 and fp16 alike."""
    for dtype in (torch.bfloat16, torch.float16):
        kernel, pinned = route(HOPPER, dtype, 128, seqlen_k, kv_tangent, False)
        assert kernel == "triton" and pinned is PINNED_CONFIGS[(kv_tangent, seqlen_k <= 256)]
        assert (pinned.kwargs, pinned.num_warps, pinned.num_stages) == (
            launch_config(*config).kwargs, config[2], config[3])


def test_keys_just_past_the_pinned_length_go_to_the_hopper_kernel():
    assert route(HOPPER, BF16, 128, 513, False, False) == Route("hopper", hopper_config(513, False))


@pytest.mark.parametrize("capability,dtype,head_dim,masked,hopper_ready", [
    (HOPPER, torch.float32, 128, False, True), ((8, 0), BF16, 128, False, True), ((10, 0), BF16, 128, False, True),
    (HOPPER, BF16, 128, True, True), (HOPPER, BF16, 32, False, True), (HOPPER, BF16, 128, False, False)],
    ids=["fp32", "sm_80", "sm_100", "masked", "head_dim_32", "hopper_kernel_off"])
def test_calls_the_hopper_kernel_does_not_fit_stay_autotuned(capability, dtype, head_dim, masked, hopper_ready):
    """As before short keys were pinned: the autotuned Triton kernel, at short and long keys alike
    (hopper_ready is False with MEGATRON_RCM_HOPPER_KERNEL=0 or misaligned tensors)."""
    for seqlen_k, kv_tangent in ((226, False), (512, True), (32760, True)):
        assert route(capability, dtype, head_dim, seqlen_k, kv_tangent, masked, hopper_ready) == Route("triton")


@pytest.mark.parametrize("capability,dtype,head_dim,masked,hopper_ready", [
    ((8, 0), BF16, 128, False, True), ((10, 0), torch.float16, 64, False, True), (HOPPER, BF16, 128, True, True),
    (HOPPER, BF16, 128, False, False), (HOPPER, torch.float32, 128, False, True)],
    ids=["sm_80", "sm_100", "masked", "hopper_kernel_off", "fp32"])
def test_deterministic_calls_take_the_first_config_autotuning_would_weigh(capability, dtype, head_dim, masked,
                                                                          hopper_ready):
    """Under torch.use_deterministic_algorithms no call is autotuned: a timed pick can differ between
    processes, and other block sizes sum the softmax in another order. The fixed config is one
    that autotuning would weigh for the call, without descriptors where they cannot serve it."""
    named = dict(Q=torch.empty(0, dtype=dtype))
    for descriptors_fit in (True, False):
        weighed = flash_jvp._prune_configs(flash_jvp._CONFIGS, dict(named, DESCRIPTORS_FIT=descriptors_fit),
                                           HEAD_DIM=head_dim)
        for seqlen_k, kv_tangent in ((226, False), (512, True), (32760, True)):
            kernel, config = route(capability, dtype, head_dim, seqlen_k, kv_tangent, masked, hopper_ready,
                                   deterministic=True, descriptors_fit=descriptors_fit)
            assert kernel == "triton" and config is weighed[0]
            assert descriptors_fit or not config.kwargs["USE_TMA"]
    if dtype == BF16 and capability == HOPPER:  # where both kinds weigh: the sweep's fastest leads
        assert route(capability, dtype, head_dim, 32760, True, masked, hopper_ready, deterministic=True).config \
            is flash_jvp._CONFIGS[0]


def test_deterministic_mode_changes_no_call_the_hopper_kernel_or_a_pinned_config_serves():
    for seqlen_k, kv_tangent in ((226, False), (512, True), (513, False), (32760, True)):
        assert route(HOPPER, BF16, 128, seqlen_k, kv_tangent, False, deterministic=True) \
            == route(HOPPER, BF16, 128, seqlen_k, kv_tangent, False)
