import torch

from megatron_rcm.kernels.reference import attention_reference


def random_inputs(batch, heads, seqlen_q, seqlen_k, head_dim, dtype, device="cpu", seed=0):
    """(q, k, v, q_t, k_t, v_t), standard normal, rounded to dtype."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shapes = [(batch, heads, s, head_dim) for s in (seqlen_q, seqlen_k, seqlen_k)] * 2
    return [torch.randn(s, dtype=torch.float64, device=device, generator=gen).to(dtype) for s in shapes]


def sbhd_views(inputs):
    """The strided [B, H, S, D] views of [S, B, H, D] storage that the Wan model passes."""
    return [t.permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3) for t in inputs]


def reference_jvp(inputs, softmax_scale=None, key_padding_mask=None):
    """(out, out_t, lse, lse_t) of the float64 reference, differentiated by torch.func.jvp."""
    q, k, v, q_t, k_t, v_t = (t.double() for t in inputs)
    (out, lse), (out_t, lse_t) = torch.func.jvp(
        lambda a, b, c: attention_reference(a, b, c, softmax_scale, key_padding_mask), (q, k, v), (q_t, k_t, v_t))
    return out, out_t, lse, lse_t


def inputs_with_key_rows_past_2_to_the_31(device="cuda"):
    """(compact inputs, the same with k, k_t, v, v_t as views of one 4.4 GB buffer whose rows are
    2^20 elements apart), so that key row offsets pass 2^31 elements, as long sequences with wide
    rows reach."""
    seqlen_k, row = 2100, 1 << 20
    buffer = torch.empty(seqlen_k * row, dtype=torch.bfloat16, device=device)
    k, k_t, v, v_t = (buffer.as_strided((1, 1, seqlen_k, 128), (0, 0, row, 1), 128 * i) for i in range(4))
    compact = random_inputs(1, 1, 64, seqlen_k, 128, torch.bfloat16, device=device)
    for view, values in zip((k, v, k_t, v_t), (compact[1], compact[2], compact[4], compact[5])):
        view.copy_(values)
    assert (seqlen_k - 1) * k.stride(2) >= 2**31
    return compact, [compact[0], k, v, compact[3], k_t, v_t]
