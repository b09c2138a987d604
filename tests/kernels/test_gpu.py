"""Compiled-kernel checks on a CUDA GPU (run without TRITON_INTERPRET: pytest -m gpu tests/kernels)."""
import pytest
import torch

from megatron_rcm.kernels import flash_attention_jvp

from megatron_rcm.testing import relative_error
from .helpers import inputs_with_key_rows_past_2_to_the_31, random_inputs, reference_jvp, sbhd_views

pytestmark = pytest.mark.gpu


@pytest.fixture(params=["dispatched", "triton"])
def kernel(request, monkeypatch):
    """flash_attention_jvp as dispatched (the Gluon kernel on sm_90 for unmasked 16-bit calls), and
    with the Triton kernel forced, so that both stay covered on Hopper GPUs."""
    if request.param == "triton":
        monkeypatch.setenv("MEGATRON_RCM_HOPPER_KERNEL", "0")
    return request.param


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 2e-2), (torch.float16, 5e-3), (torch.float32, 1e-5)])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_compiled_kernel_matches_reference(dtype, tolerance, head_dim):
    inputs = random_inputs(2, 3, 300, 517, head_dim, dtype, device="cuda")
    mask = torch.rand(2, 517, device="cuda") > 0.3
    mask[1] = False
    result = flash_attention_jvp(*inputs, key_padding_mask=mask)
    for got, want in zip(result, reference_jvp(inputs, key_padding_mask=mask)):
        assert relative_error(got, want) <= tolerance


def test_constant_keys_and_values_bf16(kernel):
    """k_t = v_t = None, cross-attention's case (Sk = 512 text tokens, as in Wan)."""
    q, k, v, q_t, _, _ = random_inputs(2, 3, 700, 512, 128, torch.bfloat16, device="cuda")
    want = reference_jvp([q, k, v, q_t, torch.zeros_like(k), torch.zeros_like(v)])
    for got, expected in zip(flash_attention_jvp(q, k, v, q_t), want):
        assert relative_error(got, expected) <= 2e-2


@pytest.mark.parametrize("batch,seqlen_q,seqlen_k", [(1, 8190, 512), (2, 5001, 226)], ids=["cross", "cross_odd"])
@pytest.mark.parametrize("kv_tangent", [True, False], ids=["key_tangents", "constant_keys"])
def test_cross_attention_as_dispatched_bf16(batch, seqlen_q, seqlen_k, kv_tangent):
    """tools/bench_attention.py's cross shapes with fewer queries, [S, B, H, D] storage as the
    models pass it: flash_attention_jvp as dispatched (on sm_90 the Triton kernel at its pinned
    config, bit for bit) against the reference."""
    from megatron_rcm.kernels.flash_jvp import PINNED_CONFIGS, _route, flash_jvp_hopper, launch

    q, k, v, q_t, k_t, v_t = sbhd_views(random_inputs(batch, 12, seqlen_q, seqlen_k, 128, torch.bfloat16,
                                                      device="cuda"))
    if not kv_tangent:
        k_t = v_t = None
    zeros = [torch.zeros_like(k), torch.zeros_like(v)]
    want = reference_jvp([q, k, v, q_t, *((k_t, v_t) if kv_tangent else zeros)])
    got = flash_attention_jvp(q, k, v, q_t, k_t, v_t)
    for name, g, w in zip(("out", "out_t", "lse", "lse_t"), got, want):
        assert relative_error(g, w) <= 2e-2, name
    kernel, config = _route(q, k, v, q_t, k_t, v_t, None)
    assert kernel == "triton"
    if torch.cuda.get_device_capability() == (9, 0) and flash_jvp_hopper is not None:
        assert config is PINNED_CONFIGS[(kv_tangent, seqlen_k <= 256)]
        pinned = launch(q, k, v, q_t, k_t, v_t, 128 ** -0.5, None, config)
        assert all(torch.equal(g, p) for g, p in zip(got, pinned))


def test_key_rows_past_2_to_the_31_elements():
    """Keys and values whose row offsets pass 2^31 elements: pointer and descriptor configs
    against the reference."""
    from megatron_rcm.kernels.flash_jvp import launch, launch_config

    compact, long_rows = inputs_with_key_rows_past_2_to_the_31()
    want = reference_jvp(compact)
    for config in (launch_config(64, 32, 4, 2), launch_config(64, 64, 4, 3, tma=True)):
        for got, expected in zip(launch(*long_rows, 128 ** -0.5, None, config), want):
            assert relative_error(got, expected) <= 2e-2, config


def test_wan_shape_bf16_tangent_error_on_a_row_slice(kernel):
    """B1 H12 S32760 D128: relative (Frobenius) error of out_t on 256 query rows <= 5e-3."""
    inputs = random_inputs(1, 12, 32760, 32760, 128, torch.bfloat16, device="cuda")
    out_t = flash_attention_jvp(*inputs).out_t
    rows = torch.cat([torch.arange(128), torch.arange(32760 - 128, 32760)]).cuda()
    sliced = [t[:, :, rows] if i in (0, 3) else t for i, t in enumerate(inputs)]
    want_t = reference_jvp(sliced)[1]
    error = ((out_t[:, :, rows].double() - want_t).norm() / want_t.norm()).item()
    assert error <= 5e-3


def test_memory_is_linear_in_sequence_length(kernel):
    extra = {}
    for seqlen in (4096, 8192):
        inputs = random_inputs(1, 4, seqlen, seqlen, 128, torch.bfloat16, device="cuda")
        torch.cuda.synchronize()
        flash_attention_jvp(*inputs)  # compile and tune outside the measurement
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = flash_attention_jvp(*inputs)
        torch.cuda.synchronize()
        extra[seqlen] = torch.cuda.max_memory_allocated() - base
        output_bytes = sum(t.numel() * t.element_size() for t in result)
        assert extra[seqlen] <= output_bytes + (1 << 20)
        del inputs, result
    assert extra[8192] <= 2.1 * extra[4096]


def test_float64_on_cuda_is_refused():
    with pytest.raises(ValueError, match="float64"):
        flash_attention_jvp(*random_inputs(1, 1, 16, 16, 16, torch.float64, device="cuda"))


@pytest.mark.parametrize("config", [(64, 64, 4, 3), (128, 64, 8, 2), (128, 32, 8, 3), (64, 32, 4, 2)], ids=str)
def test_tensor_descriptor_configs_match_reference(config):
    """The TMA (tensor descriptor) variant of a launch config, bf16, strided [B, S, H, D] views
    with a partial last key block and a padding mask: as accurate as the pointer variant."""
    from megatron_rcm.kernels.flash_jvp import launch, launch_config

    tensors = random_inputs(2, 3, 300, 517, 128, torch.bfloat16, device="cuda")
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in tensors]
    mask = torch.rand(2, 517, device="cuda") > 0.3
    want = reference_jvp(tensors, key_padding_mask=mask)
    errors = {}
    for tma in (False, True):
        result = launch(*strided, 128 ** -0.5, mask, launch_config(*config, tma=tma))
        errors[tma] = max(relative_error(got, w) for got, w in zip(result, want))
    assert errors[True] <= 2e-2 and errors[True] <= 1.5 * errors[False] + 1e-3, errors


def test_autotuned_pick_with_descriptors_is_not_reused_for_misaligned_tensors(monkeypatch):
    """Tuned first on aligned tensors (where a descriptor config may win), then called with views
    whose base is 2 bytes off a 16-byte boundary, which descriptors cannot serve. The Triton
    kernel is forced: on sm_90 the aligned call would go to the Gluon kernel and tune nothing."""
    from megatron_rcm.kernels.flash_jvp import _flash_jvp_tuned, _tma_fits

    monkeypatch.setenv("MEGATRON_RCM_HOPPER_KERNEL", "0")

    aligned = random_inputs(1, 2, 2048, 2048, 128, torch.bfloat16, device="cuda")
    flash_attention_jvp(*aligned)
    wide = [torch.randn(1, 2, 2048, 136, dtype=torch.bfloat16, device="cuda") for _ in range(6)]
    misaligned = [t[..., 1:129] for t in wide]
    assert not _tma_fits(*misaligned[1:3], *misaligned[4:])
    result = flash_attention_jvp(*misaligned)
    rows = torch.arange(0, 2048, 16, device="cuda")
    sliced = [t[:, :, rows] if i in (0, 3) else t for i, t in enumerate(misaligned)]
    for got, want in zip(result[:2], reference_jvp(sliced)[:2]):
        assert relative_error(got[:, :, rows], want) <= 2e-2
    # the misaligned call was tuned under its own key, and only pointer configs were weighed
    fits = _flash_jvp_tuned.keys.index("DESCRIPTORS_FIT")
    picks = [config for key, config in _flash_jvp_tuned.cache.items() if key[fits] == 0]
    assert picks and not any(config.kwargs["USE_TMA"] for config in picks)


def test_deterministic_algorithms_skip_autotuning():
    """Under torch.use_deterministic_algorithms a call the autotuner would take (here a key mask) runs at
    the route's fixed config: the autotuner gains no entry, and the outputs equal that config's launch
    bit for bit."""
    from megatron_rcm.kernels.flash_jvp import _flash_jvp_tuned, _route, launch

    q, k, v, q_t, k_t, v_t = random_inputs(2, 3, 300, 517, 128, torch.bfloat16, device="cuda")
    mask = torch.rand(2, 517, device="cuda") > 0.3
    before = dict(_flash_jvp_tuned.cache)
    torch.use_deterministic_algorithms(True)
    try:
        config = _route(q, k, v, q_t, k_t, v_t, mask).config
        got = flash_attention_jvp(q, k, v, q_t, k_t, v_t, softmax_scale=0.1, key_padding_mask=mask)
    finally:
        torch.use_deterministic_algorithms(False)
    assert config is not None and dict(_flash_jvp_tuned.cache) == before
    want = launch(q, k, v, q_t, k_t, v_t, 0.1, mask, config)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
