"""One code path for a model's forward and its exact JVP: primal and tangent stacked on the batch dim.

Activations are sequence-first, [S, B, ...] (Megatron's layout), and per-sample vectors are
[1, B, ...], so the batch is always dim 1. In tangent mode a tensor holds the primal in its
first half and the tangent in its second half along that dim ([S, 2B, ...]). Then
  * every linear map without a bias (reshapes, RoPE, residual adds, collectives: gathers,
    scatters, all-reduces, all-to-alls) applies to the stacked tensor as it is, in one call;
  * a linear layer runs one GEMM on the stacked tensor and adds its bias to the primal half only;
  * a nonlinear pointwise piece (norms, activations, modulation) is differentiated locally with
    ``torch.func.jvp`` on the small function;
  * attention goes through the JVP kernel (see ``megatron_rcm.models.attention``).
With ``tangent=False`` every helper is the plain op, so autograd sees the ordinary forward.
"""

import torch
import torch.nn.functional as nn_functional
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

BATCH_DIM = 1


def halves(x, tangent):
    """(primal, tangent) of a stacked tensor; (x, None) outside tangent mode."""
    return x.chunk(2, dim=BATCH_DIM) if tangent else (x, None)


def stack(primal, tangent_value):
    return torch.cat([primal, tangent_value], dim=BATCH_DIM)


def pointwise(fn, *xs, tangent):
    """fn(*xs), and in tangent mode its JVP: every x is stacked; fn sees primal halves."""
    if not tangent:
        return fn(*xs)
    primals, tangents = zip(*(x.chunk(2, dim=BATCH_DIM) for x in xs))
    out, out_t = torch.func.jvp(fn, primals, tangents)
    return stack(out, out_t)


def add_bias(y, bias, tangent):
    if bias is None:
        return y
    if not tangent:
        return y + bias
    # in place on the primal half of a fresh layer output (tangent mode runs under no_grad)
    y.narrow(BATCH_DIM, 0, y.shape[BATCH_DIM] // 2).add_(bias)
    return y


def is_one_matmul(layer):
    """Whether ``layer(x)`` is exactly ``x W^T`` and its bias, forward and backward: torch's
    ``nn.Linear``, or megatron-core's local parallel linears at tensor-parallel size 1 (they
    communicate nothing then)."""
    return isinstance(layer, torch.nn.Linear) or (
        isinstance(layer, (ColumnParallelLinear, RowParallelLinear)) and layer.config.tensor_model_parallel_size == 1)


def linear_parts(layer, x):
    """(x W^T, bias) of a torch ``nn.Linear`` or a Megatron parallel linear built with
    ``skip_bias_add=True``, for a caller that adds the bias inside its next fused piece."""
    # a layer that is one matmul is called as one: megatron-core's wrappers around it (autograd
    # Functions, region copies) cost about 15 us of host time a call, which adds up where the
    # host sets the pace (Cosmos-2B at 4096 tokens: 7 such calls a block)
    if is_one_matmul(layer):
        return nn_functional.linear(x, layer.weight), layer.bias
    return layer(x)


def linear(layer, x, tangent):
    if not tangent and is_one_matmul(layer):
        return nn_functional.linear(x, layer.weight, layer.bias)
    return add_bias(*linear_parts(layer, x), tangent)


def compute_dtype(dtype):
    """Where diffusers upcasts with ``.float()``: float32, or float64 for a float64 model."""
    return torch.promote_types(dtype, torch.float32)


def upcast(x):
    return x.to(compute_dtype(x.dtype))
