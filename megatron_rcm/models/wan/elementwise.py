"""The Wan block's elementwise pieces, each one fused kernel on CUDA, with hand-derived tangents.

Every piece has a plain form (``tangent=False``, differentiable by autograd) and a tangent form
that takes primal and tangent stacked on the batch dim and returns them stacked (conventions of
``megatron_rcm.models.tangent``). The tangent forms are written out by hand instead of
``torch.func.jvp`` so that, compiled, primal, tangent and the stacking ``cat`` come out as one
kernel: differentiated by ``torch.func.jvp`` in eager mode, these pieces took about as long
as the attention kernel. Biases of the linear layers before a piece are added inside it
(the layers run with ``skip_bias_add``), as Megatron's bias-GELU and bias-add fusions do.

On CUDA tensors the pieces run through ``torch.compile`` when ``compiled=True``
(``WanConfig.fuse_elementwise``) and autograd is not recording them: forward-only calls and
the tangent pass. Calls that autograd records run eagerly, because the compiled backward of
torch 2.11 (the GPU machines' version) returned a gradient of shape [C] for a [1, 1, C] input
(a per-sample modulation vector). On CPU the pieces run eagerly, so the float64 tests check
the same formulas. Rounding follows diffusers: reduced-precision inputs are computed on in
float32 (``upcast``) and the result is rounded to the input dtype once.
"""

import math

import torch
import torch.nn.functional as F

from ..tangent import BATCH_DIM, stack, upcast

_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def _halves(*xs):
    return [x.chunk(2, dim=BATCH_DIM) for x in xs]


class Elementwise:
    """``piece(*args, tangent=..., compiled=...)``: the plain or the stacked tangent form."""

    def __init__(self, plain, with_tangent):
        self.plain, self.with_tangent = plain, with_tangent
        self._compiled = {}

    def __call__(self, *args, tangent, compiled):
        fn = self.with_tangent if tangent else self.plain
        recorded = torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        if compiled and args[0].is_cuda and not recorded:
            if fn not in self._compiled:
                self._compiled[fn] = torch.compile(fn)
            fn = self._compiled[fn]
        return fn(*args)


# ---- GELU (tanh) after a bias ------------------------------------------------------------------

def _bias_gelu(y, bias):
    return F.gelu(y + bias, approximate="tanh")


def _bias_gelu_with_tangent(y, bias):
    (y_p, y_t), = _halves(y)
    a = upcast(y_p + bias)
    inner = torch.tanh(_GELU_K * (a + _GELU_C * a * a * a))
    slope = 0.5 * (1 + inner) + 0.5 * a * (1 - inner * inner) * _GELU_K * (1 + 3 * _GELU_C * a * a)
    return stack(F.gelu(a, approximate="tanh").to(y.dtype), (slope * upcast(y_t)).to(y.dtype))


bias_gelu = Elementwise(_bias_gelu, _bias_gelu_with_tangent)


# ---- LayerNorm: adaLN modulation and the affine cross-attention norm ---------------------------

def _normalized_with_tangent(x, x_t, eps):
    """The affine-free LayerNorm of x in float32 (float64 for float64) and its derivative along x_t."""
    x = upcast(x)
    centred = x - x.mean(-1, keepdim=True)
    rstd = torch.rsqrt(centred.square().mean(-1, keepdim=True) + eps)
    normed = centred * rstd
    t = upcast(x_t)
    t = t - t.mean(-1, keepdim=True)
    return normed, rstd * (t - normed * (normed * t).mean(-1, keepdim=True))


def _modulate(x, shift, scale, eps):
    return (F.layer_norm(upcast(x), (x.shape[-1],), eps=eps) * (1 + scale) + shift).to(x.dtype)


def _modulate_with_tangent(x, shift, scale, eps):
    (x_p, x_t), (shift_p, shift_t), (scale_p, scale_t) = _halves(x, shift, scale)
    normed, normed_t = _normalized_with_tangent(x_p, x_t, eps)
    return stack((normed * (1 + scale_p) + shift_p).to(x.dtype),
                 (normed_t * (1 + scale_p) + normed * scale_t + shift_t).to(x.dtype))


modulate = Elementwise(_modulate, _modulate_with_tangent)


def _layer_norm(x, weight, bias, eps):
    """diffusers' FP32LayerNorm: normalise in float32 (float64 for float64), return the input dtype."""
    return F.layer_norm(upcast(x), (x.shape[-1],), upcast(weight), upcast(bias), eps).to(x.dtype)


def _layer_norm_with_tangent(x, weight, bias, eps):
    normed, normed_t = _normalized_with_tangent(*x.chunk(2, dim=BATCH_DIM), eps)
    weight = upcast(weight)
    return stack((normed * weight + upcast(bias)).to(x.dtype), (normed_t * weight).to(x.dtype))


layer_norm = Elementwise(_layer_norm, _layer_norm_with_tangent)


# ---- residual adds after a linear layer ---------------------------------------------------------

def _bias_gated_residual(x, update, bias, gate):
    """x + (update + bias) * gate, in float32 like diffusers' gated residual."""
    return (upcast(x) + upcast(update + bias) * gate).to(x.dtype)


def _bias_gated_residual_with_tangent(x, update, bias, gate):
    (x_p, x_t), (update_p, update_t), (gate_p, gate_t) = _halves(x, update, gate)
    update_p = upcast(update_p + bias)
    return stack((upcast(x_p) + update_p * gate_p).to(x.dtype),
                 (upcast(x_t) + upcast(update_t) * gate_p + update_p * gate_t).to(x.dtype))


bias_gated_residual = Elementwise(_bias_gated_residual, _bias_gated_residual_with_tangent)


def _bias_residual(x, update, bias):
    return x + (update + bias)


def _bias_residual_with_tangent(x, update, bias):
    (x_p, x_t), (update_p, update_t) = _halves(x, update)
    return stack(x_p + (update_p + bias), x_t + update_t)


bias_residual = Elementwise(_bias_residual, _bias_residual_with_tangent)


# ---- RMSNorm across all heads (two pieces: a TP all-reduce of the sums of squares sits between) --

def _bias_sum_squares(y, bias):
    return upcast(y + bias).square().sum(-1, keepdim=True)


def _bias_sum_squares_with_tangent(y, bias):
    (y_p, y_t), = _halves(y)
    a = upcast(y_p + bias)
    return stack(a.square().sum(-1, keepdim=True), 2 * (a * upcast(y_t)).sum(-1, keepdim=True))


bias_sum_squares = Elementwise(_bias_sum_squares, _bias_sum_squares_with_tangent)


def apply_rope(x, cos, sin):
    """Rotate channel pairs of x [S, B, H, D] by angles with (cos, sin) [S, 1, 1, D/2]; linear in x."""
    x1, x2 = upcast(x).unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).to(x.dtype)


def _heads(x, head_dim, cos, sin):
    x = x.unflatten(-1, (-1, head_dim))
    return x if cos is None else apply_rope(x, cos, sin)


def _bias_rms_normalise(y, bias, total, weight, full_dim, eps, head_dim, cos, sin):
    """torch's RMSNorm of y + bias given the sum of squares over all ``full_dim`` channels, split
    into heads [S, B, H, head_dim] and rotated by RoPE when (cos, sin) are given."""
    normed = (upcast(y + bias) * torch.rsqrt(total / full_dim + eps)).to(y.dtype) * weight
    return _heads(normed, head_dim, cos, sin)


def _bias_rms_normalise_with_tangent(y, bias, total, weight, full_dim, eps, head_dim, cos, sin):
    (y_p, y_t), (total_p, total_t) = _halves(y, total)
    a = upcast(y_p + bias)
    rstd = torch.rsqrt(total_p / full_dim + eps)
    rstd_t = -0.5 * rstd.pow(3) * total_t / full_dim
    normed = stack((a * rstd).to(y.dtype) * weight, (upcast(y_t) * rstd + a * rstd_t).to(y.dtype) * weight)
    return _heads(normed, head_dim, cos, sin)


bias_rms_normalise = Elementwise(_bias_rms_normalise, _bias_rms_normalise_with_tangent)
