"""flash_attention_jvp against the float64 reference differentiated by torch.func.jvp."""
import math

import pytest
import torch

from megatron_rcm.kernels import AttentionJVPOutput, flash_attention_jvp
from megatron_rcm.kernels.flash_jvp import PINNED_CONFIGS, launch, launch_config

from megatron_rcm.testing import relative_error
from .helpers import random_inputs, reference_jvp

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def padding_mask(batch, seqlen_k, seed=1):
    """Random keys masked; the last batch element has every key masked."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, seqlen_k, generator=gen) > 0.3
    mask[-1] = False
    return mask


def check_against_reference(inputs, dtype, softmax_scale=None, key_padding_mask=None):
    result = flash_attention_jvp(*inputs, softmax_scale=softmax_scale, key_padding_mask=key_padding_mask)
    expected = reference_jvp(inputs, softmax_scale, key_padding_mask)
    for name, actual, want in zip(AttentionJVPOutput._fields, result, expected):
        error = relative_error(actual, want)
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e}"
    return result


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("head_dim", [16, 32, 64])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(48, 48), (37, 53)], ids=["self", "cross"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_matches_reference(dtype, head_dim, seqlen_q, seqlen_k, masked):
    inputs = random_inputs(2, 2, seqlen_q, seqlen_k, head_dim, dtype)
    mask = padding_mask(2, seqlen_k) if masked else None
    result = check_against_reference(inputs, dtype, key_padding_mask=mask)
    assert result.out.dtype == dtype and result.out_t.dtype == dtype
    lse_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert result.lse.dtype == lse_dtype and result.lse_t.dtype == lse_dtype
    assert result.lse.shape == (2, 2, seqlen_q)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_long_sequences_with_partial_large_blocks(masked):
    """Past 64 tokens the interpreter switches to blocks of 64: 130 queries, 97 keys, both partial."""
    inputs = random_inputs(2, 2, 130, 97, 32, torch.float64)
    check_against_reference(inputs, torch.float64, key_padding_mask=padding_mask(2, 97) if masked else None)


def test_float16_and_head_dim_128():
    check_against_reference(random_inputs(1, 2, 33, 40, 128, torch.float16), torch.float16)


def test_custom_scale_and_strided_inputs():
    """[B, S, H, D] tensors viewed as [B, H, S, D] (strided, last dim contiguous)."""
    tensors = random_inputs(2, 3, 29, 29, 32, torch.float64)
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in tensors]
    assert not strided[0].is_contiguous()
    check_against_reference(strided, torch.float64, softmax_scale=0.3)


@pytest.mark.parametrize("storage", [(0, 1, 2, 3), (0, 2, 1, 3), (2, 0, 1, 3)], ids=["bhsd", "bshd", "sbhd"])
def test_outputs_are_stored_in_the_order_of_q(storage):
    """Like SDPA: out and out_t [B, H, S, D] keep q's memory order, so that a model holding
    [S, B, H, D] tensors gets its layout back as a free view."""
    tensors = random_inputs(2, 3, 21, 21, 16, torch.float64)
    inverse = [storage.index(d) for d in range(4)]
    stored = [t.permute(storage).contiguous().permute(inverse) for t in tensors]
    result = check_against_reference(stored, torch.float64)
    for out in result[:2]:
        assert out.permute(storage).is_contiguous()


def test_fully_masked_rows_are_zero_with_minus_inf_lse():
    inputs = random_inputs(2, 2, 19, 37, 16, torch.float32)
    mask = padding_mask(2, 37)
    out, out_t, lse, lse_t = flash_attention_jvp(*inputs, key_padding_mask=mask)
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))
    assert torch.equal(out_t[-1], torch.zeros_like(out_t[-1]))
    assert torch.equal(lse_t[-1], torch.zeros_like(lse_t[-1]))
    assert torch.isneginf(lse[-1]).all()
    assert torch.isfinite(lse[0]).all() and torch.isfinite(out).all() and torch.isfinite(out_t).all()


def test_tangent_is_a_directional_derivative():
    """Independent of the reference: out_t matches a central finite difference of the kernel."""
    q, k, v, q_t, k_t, v_t = random_inputs(1, 2, 21, 34, 16, torch.float64)
    eps = 1e-6
    plus = flash_attention_jvp(q + eps * q_t, k + eps * k_t, v + eps * v_t, q_t, k_t, v_t)
    minus = flash_attention_jvp(q - eps * q_t, k - eps * k_t, v - eps * v_t, q_t, k_t, v_t)
    result = flash_attention_jvp(q, k, v, q_t, k_t, v_t)
    assert relative_error(result.out_t, (plus.out - minus.out) / (2 * eps)) < 1e-8
    assert relative_error(result.lse_t, (plus.lse - minus.lse) / (2 * eps)) < 1e-8


def _growing_scores(dtype, key_gain):
    """Keys scaled up along the sequence, so that the row max of the scores keeps growing from one
    key block to the next (by up to ``key_gain`` times the first block's)."""
    inputs = random_inputs(2, 2, 37, 97, 32, torch.float64)
    inputs[1] = inputs[1] * torch.linspace(0.5, key_gain, 97, dtype=torch.float64)[:, None]
    return [t.to(dtype) for t in inputs]


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "descriptors"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_launch_config_matches_reference_in_float64(masked, tma):
    """One given launch config (blocks of 32 x 16 over 37 x 97: partial blocks), scores whose row
    max grows from one key block to the next, so that the state is rescaled again and again. With
    tensor descriptors the rows past the keys come back as zeros from the copy engine."""
    inputs = _growing_scores(torch.float64, key_gain=3.0)
    mask = padding_mask(2, 97) if masked else None
    result = launch(*inputs, 32 ** -0.5, mask, launch_config(32, 16, 4, 2, tma))
    for name, actual, want in zip(AttentionJVPOutput._fields, result, reference_jvp(inputs, None, mask)):
        assert relative_error(actual, want) <= TOLERANCE[torch.float64], name


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "descriptors"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_keys_and_values_without_tangent_match_zero_tangents_in_float64(masked, tma):
    """k_t = v_t = None (constant keys, as text keys in cross-attention) skips their GEMMs: the
    same result as zero tangents, with partial key blocks and a rescaled state."""
    q, k, v, q_t, _, _ = _growing_scores(torch.float64, key_gain=3.0)
    mask = padding_mask(2, 97) if masked else None
    want = reference_jvp([q, k, v, q_t, torch.zeros_like(k), torch.zeros_like(v)], 0.3, mask)
    result = launch(q, k, v, q_t, None, None, 0.3, mask, launch_config(32, 16, 4, 2, tma))
    for name, actual, expected in zip(AttentionJVPOutput._fields, result, want):
        assert relative_error(actual, expected) <= TOLERANCE[torch.float64], name


@pytest.mark.parametrize("kind", list(PINNED_CONFIGS), ids=lambda kind: "kv_tangent={}-very_short={}".format(*kind))
def test_pinned_short_key_configs_match_reference_in_float64(kind):
    """Each launch config that serves short keys on sm_90 (flash_jvp.route), with or without key
    tangents as it serves them: 100 queries and 100 keys, partial query and key blocks."""
    kv_tangent, _ = kind
    q, k, v, q_t, k_t, v_t = random_inputs(1, 2, 100, 100, 64, torch.float64)
    if not kv_tangent:
        k_t, v_t = torch.zeros_like(k), torch.zeros_like(v)
    want = reference_jvp([q, k, v, q_t, k_t, v_t], 0.3)
    result = launch(q, k, v, q_t, *((k_t, v_t) if kv_tangent else (None, None)), 0.3, None, PINNED_CONFIGS[kind])
    for name, actual, expected in zip(AttentionJVPOutput._fields, result, want):
        assert relative_error(actual, expected) <= TOLERANCE[torch.float64], name


def test_one_missing_key_or_value_tangent_is_zero():
    q, k, v, q_t, k_t, v_t = random_inputs(2, 2, 21, 35, 16, torch.float64)
    for given in (dict(k_t=k_t), dict(v_t=v_t)):
        full = {"k_t": torch.zeros_like(k), "v_t": torch.zeros_like(v), **given}
        want = reference_jvp([q, k, v, q_t, full["k_t"], full["v_t"]])
        result = flash_attention_jvp(q, k, v, q_t, **given)
        for name, actual, expected in zip(AttentionJVPOutput._fields, result, want):
            assert relative_error(actual, expected) <= TOLERANCE[torch.float64], name


def test_64_bit_key_row_offsets_match_reference_in_float64():
    """The LONG_ROWS path (64-bit key-row offsets, chosen where (Sk - 1) * row stride passes 2^31;
    tests/kernels/test_gpu.py has such tensors) computes the same as the 32-bit one."""
    from megatron_rcm.kernels.flash_jvp import _empty_outputs, _flash_jvp_kernel, _kernel_arguments

    inputs = _growing_scores(torch.float64, key_gain=3.0)
    outputs = _empty_outputs(inputs[0], inputs[1])
    args, meta = _kernel_arguments(*inputs, 0.3, None, outputs)
    assert not meta["LONG_ROWS"]
    config = launch_config(32, 16, 4, 2)
    _flash_jvp_kernel[(2, 4)](*args, **dict(meta, LONG_ROWS=True), **config.kwargs)
    for name, actual, want in zip(AttentionJVPOutput._fields, outputs, reference_jvp(inputs, 0.3)):
        assert relative_error(actual, want) <= TOLERANCE[torch.float64], name


def test_descriptors_on_strided_inputs_match_reference_in_float64():
    """[B, S, H, D] tensors viewed as [B, H, S, D]: each descriptor starts at its (batch, head)."""
    tensors = random_inputs(2, 3, 29, 45, 32, torch.float64)
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in tensors]
    result = launch(*strided, 0.3, None, launch_config(32, 16, 4, 2, tma=True))
    for name, actual, want in zip(AttentionJVPOutput._fields, result, reference_jvp(tensors, 0.3)):
        assert relative_error(actual, want) <= TOLERANCE[torch.float64], name


def test_float32_scores_growing_past_overflow_stay_accurate():
    """Scores growing by ~150 log2 units over the keys: exp2 of scores against the first block's
    max alone would overflow float32, so every new max must move the state."""
    inputs = _growing_scores(torch.float32, key_gain=40.0)
    result = launch(*inputs, 32 ** -0.5, None, launch_config(32, 16, 4, 2))
    for name, actual, want in zip(AttentionJVPOutput._fields, result, reference_jvp(inputs)):
        assert torch.isfinite(actual).all() and relative_error(actual, want) <= TOLERANCE[torch.float32], name


def _valid():
    q, k, v, q_t, k_t, v_t = random_inputs(2, 2, 16, 24, 16, torch.float32)
    return dict(q=q, k=k, v=v, q_t=q_t, k_t=k_t, v_t=v_t)


INVALID = {
    "k_wrong_shape": (lambda a: a.update(k=a["k"][:, :1]), "k"),
    "v_wrong_length": (lambda a: a.update(v=a["v"][:, :, :20]), "v"),
    "q_t_wrong_shape": (lambda a: a.update(q_t=a["q_t"][..., :8]), "q_t"),
    "q_3d": (lambda a: a.update(q=a["q"][0]), "q"),
    "v_t_dtype": (lambda a: a.update(v_t=a["v_t"].double()), "v_t"),
    "k_last_dim_strided": (lambda a: a.update(k=a["k"].transpose(2, 3).contiguous().transpose(2, 3)), "k"),
    "head_dim_24": (lambda a: a.update({n: torch.randn(*t.shape[:3], 24) for n, t in a.items()}), "head dim"),
    "int_dtype": (lambda a: a.update({n: t.to(torch.int32) for n, t in a.items()}), "dtype"),
    "mask_shape": (lambda a: a.update(key_padding_mask=torch.ones(2, 16, dtype=torch.bool)), "key_padding_mask"),
    "mask_dtype": (lambda a: a.update(key_padding_mask=torch.ones(2, 24)), "key_padding_mask"),
    "scale_nan": (lambda a: a.update(softmax_scale=math.nan), "softmax_scale"),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_inputs_raise_value_error_naming_the_argument(case):
    mutate, name = INVALID[case]
    args = _valid()
    mutate(args)
    with pytest.raises(ValueError, match=name):
        flash_attention_jvp(**args)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        flash_attention_jvp(**_valid())


def test_autotuning_drops_descriptor_configs_where_descriptors_cannot_run():
    """Tensor descriptors need a Hopper-or-newer GPU: for CPU tensors only pointer configs stay,
    and with only descriptor configs left a pointer config stands in."""
    from megatron_rcm.kernels.flash_jvp import _prune_configs, _tma_fits

    q, k, v, q_t, k_t, v_t = random_inputs(1, 2, 64, 64, 128, torch.bfloat16)
    assert not _tma_fits(k, k_t, v, v_t)
    named = dict(Q=q, K=k, V=v, QT=q_t, KT=k_t, VT=v_t, DESCRIPTORS_FIT=0)
    mixed = [launch_config(128, 64, 8, 2, tma=True), launch_config(128, 32, 8, 3)]
    assert [c.kwargs["USE_TMA"] for c in _prune_configs(mixed, named, HEAD_DIM=128)] == [False]
    only_tma = _prune_configs(mixed[:1], named, HEAD_DIM=128)
    assert len(only_tma) == 1 and not only_tma[0].kwargs["USE_TMA"]
