"""Attention for the models: FlashAttention-4 or SDPA for plain calls, the JVP kernel under forward-mode AD.

Plain calls (with or without autograd) go to FlashAttention-4 where it is installed and serves them
(``kernels.fa4``: Hopper, 16-bit, long keys, no mask), else to torch's scaled_dot_product_attention;
reverse mode uses the chosen one's own backward. When q, k or v carries a forward-mode
tangent (torch.func.jvp or torch.autograd.forward_ad), the call goes through an
autograd.Function whose jvp runs flash_attention_jvp; that path has no backward.
"""
from typing import Optional

import torch
import torch.nn.functional as nn_functional
from torch.autograd import forward_ad

from . import fa4
from .flash_jvp import flash_attention_jvp


def _plain(q, k, v, softmax_scale, key_padding_mask):
    if fa4.serves(q, k, key_padding_mask):
        return fa4.attention(q, k, v, softmax_scale)
    attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    return nn_functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=softmax_scale)


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


class _AttentionWithTangent(torch.autograd.Function):
    @staticmethod
    def forward(q, k, v, softmax_scale, key_padding_mask):
        return _plain(q, k, v, softmax_scale, key_padding_mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, softmax_scale, key_padding_mask = inputs
        ctx.save_for_forward(q, k, v)
        ctx.softmax_scale = softmax_scale
        ctx.key_padding_mask = key_padding_mask

    @staticmethod
    def jvp(ctx, q_t, k_t, v_t, _scale_t, _mask_t):
        primals = ctx.saved_tensors
        tangents = [torch.zeros_like(p) if t is None else t for p, t in zip(primals, (q_t, k_t, v_t))]
        return flash_attention_jvp(*map(_last_dim_contiguous, (*primals, *tangents)),
                                   softmax_scale=ctx.softmax_scale,
                                   key_padding_mask=ctx.key_padding_mask).out_t


def _has_forward_tangent(t: torch.Tensor) -> bool:
    return forward_ad.unpack_dual(t).tangent is not None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: Optional[float] = None,
              key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(scale q k^T) v for [B, H, S, D] tensors; key_padding_mask [B, Sk] bool, True = attend."""
    if any(_has_forward_tangent(t) for t in (q, k, v)):
        return _AttentionWithTangent.apply(q, k, v, softmax_scale, key_padding_mask)
    return _plain(q, k, v, softmax_scale, key_padding_mask)
