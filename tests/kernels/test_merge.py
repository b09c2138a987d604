"""merge_attention_jvp over disjoint key chunks equals one pass over all keys."""
import pytest
import torch

from megatron_rcm.kernels import AttentionJVPOutput, flash_attention_jvp, merge_attention_jvp

from megatron_rcm.testing import relative_error
from .helpers import random_inputs, reference_jvp


def chunked(inputs, mask, cuts):
    q, k, v, q_t, k_t, v_t = inputs
    parts = []
    for start, stop in zip(cuts, cuts[1:]):
        keys = [t[:, :, start:stop] for t in (k, v)]
        tangents = [t[:, :, start:stop] for t in (k_t, v_t)]
        parts.append(flash_attention_jvp(q, *keys, q_t, *tangents, key_padding_mask=mask[:, start:stop]))
    return parts


@pytest.mark.parametrize("cuts", [[0, 30, 61], [0, 16, 17, 61], [0, 10, 25, 40, 61]], ids=["2", "3", "4"])
def test_merge_equals_one_pass(cuts):
    inputs = random_inputs(3, 2, 23, 61, 16, torch.float64)
    mask = torch.rand(3, 61, generator=torch.Generator().manual_seed(2)) > 0.3
    mask[0, cuts[1]:] = False  # batch 0: rows attend only to the first chunk; later chunks give lse = -inf
    mask[2] = False  # batch 2: no key at all
    merged = merge_attention_jvp(chunked(inputs, mask, cuts))
    one_pass = flash_attention_jvp(*inputs, key_padding_mask=mask)
    expected = reference_jvp(inputs, key_padding_mask=mask)
    for name, got, single, want in zip(AttentionJVPOutput._fields, merged, one_pass, expected):
        assert not torch.isnan(got).any(), name
        assert relative_error(got, single) < 1e-12, name
        assert relative_error(got, want) < 1e-12, name
    assert torch.equal(merged.out[2], torch.zeros_like(merged.out[2]))
    assert torch.isneginf(merged.lse[2]).all()


def test_merge_float32_keeps_dtypes():
    inputs = random_inputs(1, 2, 17, 40, 32, torch.float32)
    mask = torch.ones(1, 40, dtype=torch.bool)
    merged = merge_attention_jvp(chunked(inputs, mask, [0, 13, 40]))
    assert merged.out.dtype == torch.float32 and merged.lse.dtype == torch.float32
    for got, want in zip(merged, reference_jvp(inputs)):
        assert relative_error(got, want) < 1e-5


def test_merge_rejects_empty_and_mismatched_parts():
    with pytest.raises(ValueError, match="parts"):
        merge_attention_jvp([])
    inputs = random_inputs(1, 1, 16, 16, 16, torch.float32)
    part = flash_attention_jvp(*inputs)
    other = part._replace(out=part.out[:, :, :8], out_t=part.out_t[:, :, :8])
    with pytest.raises(ValueError, match=r"parts\[1\]"):
        merge_attention_jvp([part, other])
