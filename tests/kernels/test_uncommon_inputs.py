"""attention() and flash_attention_jvp on inputs the other kernel tests leave out: a tangent on keys or values
alone, primals whose head dim is strided, empty inputs; each against torch.func.jvp of the float64 reference."""
import pytest
import torch
from torch.autograd import forward_ad

from megatron_rcm.kernels import attention, flash_attention_jvp
from megatron_rcm.testing import relative_error

from .helpers import random_inputs, reference_jvp
from .test_attention import inputs_and_mask, kernel_calls  # noqa: F401 (a fixture)


@pytest.mark.parametrize("tangent_on", ["k", "v"])
def test_a_tangent_on_keys_or_values_alone_runs_the_kernel(kernel_calls, tangent_on):  # noqa: F811
    """Under forward AD only k (or only v) carries a tangent: the call must still take the JVP kernel, with
    zero tangents for the others, and give the reference's derivative."""
    inputs, mask = inputs_and_mask()
    q, k, v, _, k_t, v_t = inputs
    zeros = [torch.zeros_like(t) for t in (q, k, v)]
    tangents = dict(q=zeros[0], k=k_t if tangent_on == "k" else zeros[1], v=v_t if tangent_on == "v" else zeros[2])
    with forward_ad.dual_level():
        dual = forward_ad.make_dual({"k": k, "v": v}[tangent_on], tangents[tangent_on])
        args = (q, dual, v) if tangent_on == "k" else (q, k, dual)
        out, out_t = forward_ad.unpack_dual(attention(*args, softmax_scale=0.3, key_padding_mask=mask))
    want, want_t, _, _ = reference_jvp([q, k, v, *tangents.values()], 0.3, mask)
    assert kernel_calls == [1]
    assert want_t.abs().max() > 0.1
    assert relative_error(out, want) < 1e-12 and relative_error(out_t, want_t) < 1e-12


def test_attention_under_jvp_takes_primals_and_tangents_with_a_strided_head_dim(kernel_calls):  # noqa: F811
    """The kernel needs the head dim contiguous; attention() hands it contiguous copies of tensors whose head
    dim is strided ([B, H, D, S] storage viewed as [B, H, S, D])."""
    inputs, mask = inputs_and_mask()
    strided = [t.transpose(2, 3).contiguous().transpose(2, 3) for t in inputs]
    assert all(t.stride(-1) != 1 for t in strided)
    out, out_t = torch.func.jvp(lambda q, k, v: attention(q, k, v, 0.2, mask), tuple(strided[:3]),
                                tuple(strided[3:]))
    want, want_t, _, _ = reference_jvp(inputs, 0.2, mask)
    assert kernel_calls == [1]
    assert relative_error(out, want) < 1e-12 and relative_error(out_t, want_t) < 1e-12


@pytest.mark.parametrize("empty", ["queries", "keys", "heads"])
def test_empty_inputs_are_refused(empty):
    """No queries, no keys or no heads: a ValueError, not an output of zeros or -inf."""
    sizes = dict(queries=(2, 2, 0, 8), keys=(2, 2, 8, 0), heads=(2, 0, 8, 8))[empty]
    batch, heads, seqlen_q, seqlen_k = sizes
    with pytest.raises(ValueError, match="non-empty"):
        flash_attention_jvp(*random_inputs(batch, heads, seqlen_q, seqlen_k, 16, torch.float64))


def test_merge_refuses_parts_whose_lse_does_not_match_their_rows():
    """A part with lse or lse_t of other rows than its output (here the rows of another query count) is refused,
    rather than broadcast into the merge."""
    from megatron_rcm.kernels import merge_attention_jvp

    part = flash_attention_jvp(*random_inputs(1, 2, 16, 16, 16, torch.float64))
    for bad in (part._replace(lse=part.lse[:, :, :1]), part._replace(lse_t=part.lse_t[:, :1])):
        with pytest.raises(ValueError, match=r"parts\[1\] lse/lse_t"):
            merge_attention_jvp([part, bad])


def test_merge_of_bfloat16_parts_returns_bfloat16_outputs_and_float32_lse():
    """Merging runs in the lse dtype (float32) but hands out and out_t back in the parts' dtype."""
    from megatron_rcm.kernels import merge_attention_jvp

    inputs = random_inputs(1, 2, 17, 40, 16, torch.bfloat16, seed=4)
    q, k, v, q_t, k_t, v_t = inputs
    parts = [flash_attention_jvp(q, k[:, :, a:b], v[:, :, a:b], q_t, k_t[:, :, a:b], v_t[:, :, a:b])
             for a, b in ((0, 13), (13, 40))]
    merged = merge_attention_jvp(parts)
    assert (merged.out.dtype, merged.out_t.dtype, merged.lse.dtype, merged.lse_t.dtype) == (
        torch.bfloat16, torch.bfloat16, torch.float32, torch.float32)
    for got, want in zip(merged, reference_jvp(inputs)):
        assert relative_error(got, want) < 2e-2


def test_a_strided_key_padding_mask_is_read_through_its_strides():
    """A mask that is a view ([Sk, B] storage transposed to [B, Sk]) selects the same keys as its contiguous
    copy: the kernel follows both of its strides, with partial key blocks."""
    inputs = random_inputs(2, 2, 21, 37, 16, torch.float64, seed=5)
    mask = torch.rand(37, 2, generator=torch.Generator().manual_seed(6)).t() > 0.3
    assert mask.stride() == (1, 2)
    for got, want in zip(flash_attention_jvp(*inputs, key_padding_mask=mask), reference_jvp(inputs, None, mask)):
        assert relative_error(got, want) < 1e-12
