"""Exact merge of attention (with tangents) over disjoint key chunks (docs/math.md section 8)."""
from typing import Sequence

import torch

from .flash_jvp import AttentionJVPOutput


def merge_attention_jvp(parts: Sequence[AttentionJVPOutput]) -> AttentionJVPOutput:
    """Combines per-chunk (out, out_t, lse, lse_t) into the result over all keys.

    A row that attends to no key of a chunk has lse = -inf there and gets weight 0
    from it; a row with no key in any chunk merges to out = out_t = 0, lse = -inf,
    lse_t = 0. Arithmetic runs in the lse dtype (float32, or float64).
    """
    parts = list(parts)
    if not parts:
        raise ValueError("parts must hold at least one AttentionJVPOutput")
    first = parts[0]
    for i, part in enumerate(parts):
        if part.out.shape != first.out.shape or part.out_t.shape != first.out.shape:
            raise ValueError(f"parts[{i}] out/out_t shape {tuple(part.out.shape)} differs from "
                             f"parts[0] {tuple(first.out.shape)}")
        if part.lse.shape != first.out.shape[:-1] or part.lse_t.shape != part.lse.shape:
            raise ValueError(f"parts[{i}] lse/lse_t must have shape {tuple(first.out.shape[:-1])}")
    acc_dtype = first.lse.dtype
    lse_all = torch.stack([part.lse.to(acc_dtype) for part in parts])
    lse = torch.logsumexp(lse_all, dim=0)
    lse_shift = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
    weights = torch.exp(lse_all - lse_shift)

    lse_t = sum(w * part.lse_t.to(acc_dtype) for w, part in zip(weights, parts))
    out = torch.zeros(first.out.shape, dtype=acc_dtype, device=first.out.device)
    out_t = torch.zeros_like(out)
    for w, part in zip(weights, parts):
        o = part.out.to(acc_dtype)
        out += w[..., None] * o
        out_t += w[..., None] * (part.out_t.to(acc_dtype) + (part.lse_t.to(acc_dtype) - lse_t)[..., None] * o)
    return AttentionJVPOutput(out.to(first.out.dtype), out_t.to(first.out.dtype), lse, lse_t)
