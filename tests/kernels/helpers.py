import torch

from megatron_rcm.kernels.reference import attention_reference


def random_inputs(batch, heads, seqlen_q, seqlen_k, head_dim, dtype, device="cpu", seed=0):
    """(q, k, v, q_t, k_t, v_t), standard normal, rounded to dtype."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shapes = [(batch, heads, s, head_dim) for s in (seqlen_q, seqlen_k, seqlen_k)] * 2
    return [torch.randn(s, dtype=torch.float64, device=device, generator=gen).to(dtype) for s in shapes]


def reference_jvp(inputs, softmax_scale=None, key_padding_mask=None):
    """(out, out_t, lse, lse_t) of the float64 reference, differentiated by torch.func.jvp."""
    q, k, v, q_t, k_t, v_t = (t.double() for t in inputs)
    (out, lse), (out_t, lse_t) = torch.func.jvp(
        lambda a, b, c: attention_reference(a, b, c, softmax_scale, key_padding_mask), (q, k, v), (q_t, k_t, v_t))
    return out, out_t, lse, lse_t


def max_rel_error(actual, expected):
    """max |actual - expected| / max |expected| over finite entries; non-finite entries must match exactly."""
    actual = actual.double()
    finite = torch.isfinite(expected)
    assert torch.equal(actual[~finite], expected[~finite]), "non-finite entries differ"
    diff = (actual[finite] - expected[finite]).abs().max()
    return (diff / expected[finite].abs().max()).item()
