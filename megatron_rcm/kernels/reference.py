"""Plain-torch attention, the oracle for tests and benchmarks (run it in float64).

Differentiate it with torch.func.jvp; rows whose keys are all masked follow the
kernel's convention (out = 0, lse = -inf, zero tangents) through torch.where, which
passes no tangent from the branch it does not select.
"""
import math

import torch


def attention_reference(q, k, v, softmax_scale=None, key_padding_mask=None):
    """Returns (out, lse) for [B, H, S, D] inputs; key_padding_mask [B, Sk], True = attend."""
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    scores = softmax_scale * torch.matmul(q, k.transpose(-1, -2))
    if key_padding_mask is None:
        return torch.matmul(torch.softmax(scores, dim=-1), v), torch.logsumexp(scores, dim=-1)
    attend = key_padding_mask[:, None, None, :]
    live_row = key_padding_mask.any(dim=-1)[:, None, None]
    # Dead rows get all keys unmasked so that nothing computed for them is NaN.
    scores = scores.masked_fill(~(attend | ~live_row[..., None]), float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v)
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.where(live_row[..., None], out, torch.zeros_like(out))
    lse = torch.where(live_row, lse, torch.full_like(lse, float("-inf")))
    return out, lse
