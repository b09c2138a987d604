"""A DiT block's elementwise pieces (Wan, Cosmos), each one fused kernel on CUDA, with hand-derived derivatives.

Every piece has three forms, all written out by hand:
  * plain: ``piece(*args, tangent=False)``, the forward;
  * tangent: ``piece(*args, tangent=True)`` takes primal and tangent stacked on the batch dim
    and returns them stacked (conventions of ``megatron_rcm.models.tangent``);
  * backward: where autograd records a plain call, a ``torch.autograd.Function`` runs the plain
    form without autograd and, in the backward pass, the piece's backward form (the gradients
    of every tensor argument).
Written out instead of ``torch.func.jvp`` / autograd, each form compiles into one kernel, cat and
reductions included (differentiated by ``torch.func.jvp`` in eager mode, these pieces took about
as long as the attention kernel), and no form relies on torch.compile's own backward: torch
2.11's (the GPU machines' version) returned a gradient of shape [C] for a [1, 1, C] input.
Biases of the linear layers before a piece are added inside it (the layers run with
``skip_bias_add``), as Megatron's bias-GELU and bias-add fusions do; a bias of ``None`` (a layer
without one) adds nothing.

On CUDA tensors the forms run through ``torch.compile`` when ``compiled=True``
(the model config's ``fuse_elementwise``); on CPU they run eagerly, so the float64 tests check the same
formulas. Where torch.compile's kernel for a form was slow, a hand-written Triton kernel of the same
formula takes its place on CUDA (the GELU backward: ``megatron_rcm.kernels.gelu``). Rounding follows
diffusers: reduced-precision inputs are computed on in float32 (``upcast``) and the result is rounded
to the input dtype once.
"""

import contextlib
import contextvars
import functools
import math

import torch
import torch.nn.functional as nn_functional

from ..kernels import gelu as gelu_kernels
from .tangent import BATCH_DIM, is_one_matmul, linear_parts, stack, upcast

_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _halves(*xs):
    return [x.chunk(2, dim=BATCH_DIM) for x in xs]


def _grad(g, like):
    """A float32 gradient summed over the dims ``like`` broadcasts in, in ``like``'s dtype (None for None)."""
    return None if like is None else g.sum_to_size(like.shape).to(like.dtype)


def _plus(y, bias):
    return y if bias is None else y + bias


# The thread count of the first compiled call. Dynamo guards every graph on torch's CPU thread
# count, which is per thread: autograd's device threads start at the process default, which a
# DataLoader's pin-memory thread sets to 1, so backward and recompute calls on autograd's thread would
# otherwise compile each form they meet a second time. No compiled form runs CPU work.
_THREADS = []


def _same_thread_count():
    if not _THREADS:
        _THREADS.append(torch.get_num_threads())
    elif torch.get_num_threads() != _THREADS[0]:
        torch.set_num_threads(_THREADS[0])


def start_compile_workers(device: torch.device):
    """Start TorchInductor's compile worker processes now if pieces will compile on ``device``: they
    take seconds to start, and until they are up inductor compiles each kernel (every launch config
    it weighs) in this process, one after another. torch starts them at the first compile; a trainer
    calls this before building its networks, so that they start while it does."""
    if device.type in Elementwise.compile_on:
        from torch._inductor.async_compile import maybe_warm_pool

        maybe_warm_pool()


class _HandWrittenBackward(torch.autograd.Function):
    """A plain call that autograd records: the forward without autograd, the backward form after."""

    @staticmethod
    def forward(ctx, piece, compiled, *args):
        ctx.piece, ctx.compiled = piece, compiled
        ctx.is_tensor = [isinstance(a, torch.Tensor) for a in args]
        ctx.constants = [None if t else a for a, t in zip(args, ctx.is_tensor)]
        ctx.save_for_backward(*(a for a, t in zip(args, ctx.is_tensor) if t))
        return piece.run(piece.plain, args, compiled)

    @staticmethod
    def backward(ctx, *grads):
        tensors = iter(ctx.saved_tensors)
        args = [next(tensors) if t else c for c, t in zip(ctx.constants, ctx.is_tensor)]
        grads = ctx.piece.run(ctx.piece.backward, (*(g.contiguous() for g in grads), *args), ctx.compiled)
        return (None, None, *grads)


class Elementwise:
    """``piece(*args, tangent=..., compiled=...)``: the plain or the stacked tangent form; plain
    calls that autograd records differentiate through the backward form. A piece with several
    outputs returns a tuple from its plain and tangent forms; its backward form takes one
    gradient per output, then the arguments. ``backward_kernel``, if given, takes the backward
    form's arguments and returns its results; compiled calls on CUDA run it instead of compiling
    the backward form."""

    compile_on = ("cuda",)  # device types where ``compiled=True`` compiles (tests add "cpu")
    compile_options = {}  # TorchInductor options of every piece's torch.compile

    def __init__(self, plain, with_tangent, backward, backward_kernel=None):
        self.plain, self.with_tangent, self.backward = plain, with_tangent, backward
        self.backward_kernel = backward_kernel
        self._compiled = {}

    def run(self, fn, args, compiled):
        if compiled and fn is self.backward and self.backward_kernel is not None and args[0].is_cuda:
            return self.backward_kernel(*args)
        if compiled and args[0].device.type in self.compile_on:
            if fn not in self._compiled:
                # one training step calls each form with several dtypes and shapes (teacher,
                # student and fake score; guided pairs; TP/SP shards): more than dynamo's default 8
                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
                self._compiled[fn] = torch.compile(fn, options=self.compile_options or None)
            fn = self._compiled[fn]
            _same_thread_count()
            if not torch.is_grad_enabled():
                # nothing is recorded here (no grad, or inside the autograd Function): without
                # requires_grad flags and Parameter types, the calls of the frozen teacher and of
                # the trainable networks pass the same guards and share one compiled graph
                args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        return fn(*args)

    def __call__(self, *args, tangent, compiled):
        if tangent:
            return self.run(self.with_tangent, args, compiled)
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return _HandWrittenBackward.apply(self, compiled, *args)
        return self.run(self.plain, args, compiled)


# ---- GELU (tanh) after a bias ------------------------------------------------------------------

def _gelu_slope(a):
    inner = torch.tanh(_GELU_K * (a + _GELU_C * a * a * a))
    return 0.5 * (1 + inner) + 0.5 * a * (1 - inner * inner) * _GELU_K * (1 + 3 * _GELU_C * a * a)


def _bias_gelu(y, bias):
    return nn_functional.gelu(_plus(y, bias), approximate="tanh")


def _bias_gelu_with_tangent(y, bias):
    (y_p, y_t), = _halves(y)
    a = upcast(_plus(y_p, bias))
    return stack(nn_functional.gelu(a, approximate="tanh").to(y.dtype), (_gelu_slope(a) * upcast(y_t)).to(y.dtype))


def _bias_gelu_backward(grad, y, bias):
    g = upcast(grad) * _gelu_slope(upcast(_plus(y, bias)))
    return g.to(y.dtype), _grad(g, bias)


bias_gelu = Elementwise(_bias_gelu, _bias_gelu_with_tangent, _bias_gelu_backward,
                        functools.partial(gelu_kernels.bias_gelu_backward, exact=False))

_GEMM_EPILOGUES = contextvars.ContextVar("gemm_epilogues", default=True)


@contextlib.contextmanager
def without_gemm_epilogues():
    """Calls inside round as calls that autograd records do: for a pass that runs first without
    grad and again with it (megatron's reentrant recompute), so that both passes agree bit for bit."""
    token = _GEMM_EPILOGUES.set(False)
    try:
        yield
    finally:
        _GEMM_EPILOGUES.reset(token)


def linear_bias_gelu(layer, x, *, tangent, compiled):
    """GELU-tanh of ``layer(x)`` (a linear layer with its bias), in every form of ``bias_gelu``.

    A call that nothing differentiates (no tangent, no grad, on CUDA, ``compiled``) through a layer
    that is one matmul with a bias runs as one cuBLASLt GEMM with the bias and the GELU in its
    epilogue (``torch._addmm_activation``, tanh form on CUDA): the FFN's widest activation is then
    written once instead of written, read and written again. The GELU then acts on the float32
    accumulator, one bf16 rounding fewer than a linear layer followed by the GELU. The JVP and the
    backward need the pre-activation, which the epilogue does not return, so those calls keep the
    GEMM and the fused piece apart.
    """
    if (compiled and not tangent and x.is_cuda and not torch.is_grad_enabled() and _GEMM_EPILOGUES.get()
            and is_one_matmul(layer) and layer.bias is not None):
        out = torch._addmm_activation(layer.bias, x.flatten(0, -2), layer.weight.t(), use_gelu=True)
        return out.unflatten(0, x.shape[:-1])
    return bias_gelu(*linear_parts(layer, x), tangent=tangent, compiled=compiled)


# ---- exact (erf) GELU after an optional bias ---------------------------------------------------

def _erf_gelu_slope(a):
    return 0.5 * (1 + torch.erf(a * _SQRT_HALF)) + a * torch.exp(-0.5 * a * a) * _INV_SQRT_2PI


def _bias_gelu_erf(y, bias):
    return nn_functional.gelu(_plus(y, bias))


def _bias_gelu_erf_with_tangent(y, bias):
    (y_p, y_t), = _halves(y)
    a = upcast(_plus(y_p, bias))
    return stack(nn_functional.gelu(a).to(y.dtype), (_erf_gelu_slope(a) * upcast(y_t)).to(y.dtype))


def _bias_gelu_erf_backward(grad, y, bias):
    g = upcast(grad) * _erf_gelu_slope(upcast(_plus(y, bias)))
    return g.to(y.dtype), _grad(g, bias)


bias_gelu_erf = Elementwise(_bias_gelu_erf, _bias_gelu_erf_with_tangent, _bias_gelu_erf_backward,
                            functools.partial(gelu_kernels.bias_gelu_backward, exact=True))


# ---- LayerNorm: adaLN modulation and the affine cross-attention norm ---------------------------

def _normalized(x, eps):
    """The affine-free LayerNorm of x in float32 (float64 for float64), and 1/std. Two reductions
    (mean, then the mean square about it) rather than ``layer_norm``'s Welford pass: over rows of
    1536 torch.compile makes a looped Welford kernel of it, which took 1.2-1.3x as long on an H200
    (tools/bench_elementwise.py, docs/benchmarks.md)."""
    x = upcast(x)
    centred = x - x.mean(-1, keepdim=True)
    rstd = torch.rsqrt(centred.square().mean(-1, keepdim=True) + eps)
    return centred * rstd, rstd


def _normalized_jacobian(normed, rstd, t):
    """The LayerNorm's Jacobian (symmetric) applied to t: for the tangent and the gradient alike."""
    t = upcast(t)
    return rstd * (t - t.mean(-1, keepdim=True) - normed * (normed * t).mean(-1, keepdim=True))


def _modulate(x, shift, scale, eps):
    return (_normalized(x, eps)[0] * (1 + scale) + shift).to(x.dtype)


def _modulate_with_tangent(x, shift, scale, eps):
    (x_p, x_t), (shift_p, shift_t), (scale_p, scale_t) = _halves(x, shift, scale)
    normed, rstd = _normalized(x_p, eps)
    normed_t = _normalized_jacobian(normed, rstd, x_t)
    return stack((normed * (1 + scale_p) + shift_p).to(x.dtype),
                 (normed_t * (1 + scale_p) + normed * scale_t + shift_t).to(x.dtype))


def _modulate_backward(grad, x, shift, scale, eps):
    normed, rstd = _normalized(x, eps)
    g = upcast(grad)
    g_x = _normalized_jacobian(normed, rstd, g * (1 + scale))
    return g_x.to(x.dtype), _grad(g, shift), _grad(g * normed, scale), None


modulate = Elementwise(_modulate, _modulate_with_tangent, _modulate_backward)


def _layer_norm(x, weight, bias, eps):
    """diffusers' FP32LayerNorm: normalise in float32 (float64 for float64), return the input dtype."""
    return (_normalized(x, eps)[0] * upcast(weight) + upcast(bias)).to(x.dtype)


def _layer_norm_with_tangent(x, weight, bias, eps):
    x_p, x_t = x.chunk(2, dim=BATCH_DIM)
    normed, rstd = _normalized(x_p, eps)
    normed_t = _normalized_jacobian(normed, rstd, x_t)
    weight = upcast(weight)
    return stack((normed * weight + upcast(bias)).to(x.dtype), (normed_t * weight).to(x.dtype))


def _layer_norm_backward(grad, x, weight, bias, eps):
    normed, rstd = _normalized(x, eps)
    g = upcast(grad)
    g_x = _normalized_jacobian(normed, rstd, g * upcast(weight))
    return g_x.to(x.dtype), _grad(g * normed, weight), _grad(g, bias), None


layer_norm = Elementwise(_layer_norm, _layer_norm_with_tangent, _layer_norm_backward)


# ---- residual adds after a linear layer ---------------------------------------------------------

def _bias_gated_residual(x, update, bias, gate):
    """x + (update + bias) * gate, in float32 like diffusers' gated residual."""
    return (upcast(x) + upcast(_plus(update, bias)) * gate).to(x.dtype)


def _bias_gated_residual_with_tangent(x, update, bias, gate):
    (x_p, x_t), (update_p, update_t), (gate_p, gate_t) = _halves(x, update, gate)
    update_p = upcast(_plus(update_p, bias))
    return stack((upcast(x_p) + update_p * gate_p).to(x.dtype),
                 (upcast(x_t) + upcast(update_t) * gate_p + update_p * gate_t).to(x.dtype))


def _bias_gated_residual_backward(grad, x, update, bias, gate):
    g = upcast(grad)
    g_update = g * gate
    return grad, g_update.to(update.dtype), _grad(g_update, bias), _grad(g * upcast(_plus(update, bias)), gate)


bias_gated_residual = Elementwise(_bias_gated_residual, _bias_gated_residual_with_tangent,
                                  _bias_gated_residual_backward)


# ---- a gated residual, then the next sublayer's modulation of its result -----------------------
# (one kernel where there were two: the residual stream is read once, and a block makes one
# compiled call fewer per sublayer, which counts where the host, not the GPU, sets the pace)

def _gated_residual_modulate(x, update, bias, gate, shift, scale, eps):
    """(x + (update + bias) * gate, its adaLN modulation): the two pieces, the sum rounded in between."""
    x = _bias_gated_residual(x, update, bias, gate)
    return x, _modulate(x, shift, scale, eps)


def _gated_residual_modulate_with_tangent(x, update, bias, gate, shift, scale, eps):
    x = _bias_gated_residual_with_tangent(x, update, bias, gate)
    return x, _modulate_with_tangent(x, shift, scale, eps)


def _gated_residual_modulate_backward(grad_sum, grad_modulated, x, update, bias, gate, shift, scale, eps):
    total = _bias_gated_residual(x, update, bias, gate)  # recomputed in the kernel rather than kept
    grad_total, grad_shift, grad_scale, _ = _modulate_backward(grad_modulated, total, shift, scale, eps)
    return (*_bias_gated_residual_backward(grad_sum + grad_total, x, update, bias, gate), grad_shift, grad_scale,
            None)


gated_residual_modulate = Elementwise(_gated_residual_modulate, _gated_residual_modulate_with_tangent,
                                      _gated_residual_modulate_backward)


def _bias_residual(x, update, bias):
    return x + (update + bias)


def _bias_residual_with_tangent(x, update, bias):
    (x_p, x_t), (update_p, update_t) = _halves(x, update)
    return stack(x_p + (update_p + bias), x_t + update_t)


def _bias_residual_backward(grad, x, update, bias):
    return grad, grad, _grad(upcast(grad), bias)


bias_residual = Elementwise(_bias_residual, _bias_residual_with_tangent, _bias_residual_backward)


# ---- RMSNorm across all heads (two pieces: a TP all-reduce of the sums of squares sits between) --

def _bias_sum_squares(y, bias):
    return upcast(y + bias).square().sum(-1, keepdim=True)


def _bias_sum_squares_with_tangent(y, bias):
    (y_p, y_t), = _halves(y)
    a = upcast(y_p + bias)
    return stack(a.square().sum(-1, keepdim=True), 2 * (a * upcast(y_t)).sum(-1, keepdim=True))


def _bias_sum_squares_backward(grad, y, bias):
    g = 2 * upcast(y + bias) * grad
    return g.to(y.dtype), _grad(g, bias)


bias_sum_squares = Elementwise(_bias_sum_squares, _bias_sum_squares_with_tangent, _bias_sum_squares_backward)


def _rotate_pairs(pairs, cos, sin, pair_dim):
    """pairs * cos + (pairs with the two members of each pair swapped) * (-sin, +sin), the pair
    members along ``pair_dim`` (size 2). Written with a flip rather than a stack or cat of the
    rotated halves, so that torch.compile fuses the rotation into the kernel that computes its
    input: read in four places, that input was written to memory and read back by a second kernel."""
    shape = [1] * pairs.dim()
    shape[pair_dim] = 2
    sign = sin.new_tensor((-1.0, 1.0)).view(shape)
    return pairs * cos + pairs.flip(pair_dim) * (sin * sign)


def apply_rope(x, cos, sin):
    """Rotate channel pairs (2i, 2i+1) of x [S, B, H, D] by angles with (cos, sin) [S, 1, 1, D/2]; linear in x."""
    pairs = upcast(x).unflatten(-1, (-1, 2))
    return _rotate_pairs(pairs, cos[..., None], sin[..., None], -1).flatten(-2).to(x.dtype)


def apply_rope_halves(x, cos, sin):
    """Rotate channel pairs (i, i + D/2) of x [S, B, H, D] (the "rotate half" layout); linear in x."""
    halves = upcast(x).unflatten(-1, (2, -1))
    return _rotate_pairs(halves, cos[..., None, :], sin[..., None, :], -2).flatten(-2).to(x.dtype)


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


def _bias_rms_normalise_backward(grad, y, bias, total, weight, full_dim, eps, head_dim, cos, sin):
    g = upcast(grad)
    if cos is not None:
        g = apply_rope(g, cos, -sin)  # the rotation's transpose
    g = g.flatten(-2)
    a = upcast(y + bias)
    rstd = torch.rsqrt(total / full_dim + eps)
    g_weight = _grad(g * upcast((a * rstd).to(y.dtype)), weight)
    g = g * upcast(weight)
    g_a = g * rstd
    g_total = (g * a).sum(-1, keepdim=True) * (-0.5 * rstd.pow(3) / full_dim)
    return g_a.to(y.dtype), _grad(g_a, bias), g_total.to(total.dtype), g_weight, None, None, None, None, None


bias_rms_normalise = Elementwise(_bias_rms_normalise, _bias_rms_normalise_with_tangent,
                                 _bias_rms_normalise_backward)


# ---- RMSNorm of each head, then RoPE in the rotate-half layout (Cosmos' q/k norms) -------------

def _rope_halves(x, cos, sin):
    return x if cos is None else apply_rope_halves(x, cos, sin)


def _head_rms(y, eps, head_dim):
    """(y split into heads in float32 / float64, its 1/rms per head)."""
    a = upcast(y.unflatten(-1, (-1, head_dim)))
    return a, torch.rsqrt(a.square().mean(-1, keepdim=True) + eps)


def _head_rms_norm(y, weight, eps, head_dim, cos, sin):
    """diffusers' RMSNorm over each head of y [S, B, H*head_dim] (weight [head_dim], shared by the
    heads) as [S, B, H, head_dim], rotated by RoPE when (cos, sin) are given."""
    a, rstd = _head_rms(y, eps, head_dim)
    return _rope_halves((a * rstd).to(y.dtype) * weight, cos, sin)


def _head_rms_norm_with_tangent(y, weight, eps, head_dim, cos, sin):
    (y_p, y_t), = _halves(y)
    a, rstd = _head_rms(y_p, eps, head_dim)
    a_t = upcast(y_t.unflatten(-1, (-1, head_dim)))
    rstd_t = -rstd.pow(3) * (a * a_t).mean(-1, keepdim=True)
    normed = stack((a * rstd).to(y.dtype) * weight, (a_t * rstd + a * rstd_t).to(y.dtype) * weight)
    return _rope_halves(normed, cos, sin)


def _head_rms_norm_backward(grad, y, weight, eps, head_dim, cos, sin):
    g = upcast(grad)
    if cos is not None:
        g = apply_rope_halves(g, cos, -sin)  # the rotation's transpose
    a, rstd = _head_rms(y, eps, head_dim)
    g_weight = _grad(g * upcast((a * rstd).to(y.dtype)), weight)
    g = g * upcast(weight)
    g_a = rstd * g - rstd.pow(3) * a * (g * a).mean(-1, keepdim=True)
    return g_a.flatten(-2).to(y.dtype), g_weight, None, None, None, None


head_rms_norm = Elementwise(_head_rms_norm, _head_rms_norm_with_tangent, _head_rms_norm_backward)


def _qk_head_rms_norm(qk, q_weight, k_weight, eps, head_dim, cos, sin):
    """(q, k) of qk = [q, k] [S, B, 2 * H * head_dim] (a fused projection's output), each through
    ``head_rms_norm`` with its own weight: one kernel for both."""
    q, k = qk.chunk(2, dim=-1)
    return _head_rms_norm(q, q_weight, eps, head_dim, cos, sin), _head_rms_norm(k, k_weight, eps, head_dim, cos, sin)


def _qk_head_rms_norm_with_tangent(qk, q_weight, k_weight, eps, head_dim, cos, sin):
    q, k = qk.chunk(2, dim=-1)
    return (_head_rms_norm_with_tangent(q, q_weight, eps, head_dim, cos, sin),
            _head_rms_norm_with_tangent(k, k_weight, eps, head_dim, cos, sin))


def _qk_head_rms_norm_backward(grad_q, grad_k, qk, q_weight, k_weight, eps, head_dim, cos, sin):
    q, k = qk.chunk(2, dim=-1)
    grad_q, grad_q_weight = _head_rms_norm_backward(grad_q, q, q_weight, eps, head_dim, cos, sin)[:2]
    grad_k, grad_k_weight = _head_rms_norm_backward(grad_k, k, k_weight, eps, head_dim, cos, sin)[:2]
    return torch.cat([grad_q, grad_k], dim=-1), grad_q_weight, grad_k_weight, None, None, None, None


qk_head_rms_norm = Elementwise(_qk_head_rms_norm, _qk_head_rms_norm_with_tangent, _qk_head_rms_norm_backward)
