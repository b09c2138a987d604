"""Linear layers every model family builds from: replicated ``nn.Linear`` and megatron-core's
column/row-parallel linears (or Transformer Engine's), plus the sinusoidal timestep embedding.

Replicated parameters that see only this rank's share of the tokens under sequence parallelism
carry ``sequence_parallel = True``: as in Megatron, their gradients are summed over the TP group
after the backward (``finalize_model_grads``).
"""

import math

import torch
import torch.nn.functional as nn_functional
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear


def param_device(config):
    return torch.device("cpu") if config.use_cpu_initialization else torch.device("cuda", torch.cuda.current_device())


def replicated_linear(config, in_features, out_features, sequence_parallel, bias=True):
    layer = torch.nn.Linear(in_features, out_features, bias=bias, device=param_device(config),
                            dtype=config.params_dtype)
    for p in layer.parameters():
        p.sequence_parallel = sequence_parallel
    return layer


def _parallel_linear_classes(config):
    if config.transformer_impl == "local":
        return ColumnParallelLinear, RowParallelLinear
    from megatron.core.extensions import transformer_engine as te

    if not te.HAVE_TE:
        raise ImportError("transformer_impl='transformer_engine' needs Transformer Engine installed; "
                          "use transformer_impl='local'")
    return te.TEColumnParallelLinear, te.TERowParallelLinear


def column_linear(config, in_features, out_features, bias=True):
    column, _ = _parallel_linear_classes(config)
    return column(in_features, out_features, config=config, init_method=config.init_method, bias=bias,
                  gather_output=False, skip_bias_add=True, is_expert=False)


def row_linear(config, in_features, out_features, bias=True):
    _, row = _parallel_linear_classes(config)
    return row(in_features, out_features, config=config, init_method=config.output_layer_init_method, bias=bias,
               input_is_parallel=True, skip_bias_add=True, is_expert=False)


def is_one_matmul(layer):
    """Whether ``layer(x)`` is exactly ``x W^T`` and its bias, forward and backward: torch's
    ``nn.Linear``, or megatron-core's local parallel linears at tensor-parallel size 1 (they
    communicate nothing then)."""
    return isinstance(layer, torch.nn.Linear) or (
        isinstance(layer, (ColumnParallelLinear, RowParallelLinear)) and layer.config.tensor_model_parallel_size == 1)


def timestep_sinusoid(timestep, dim, dtype):
    """diffusers' ``get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0)`` in ``dtype``."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=dtype, device=timestep.device) / half
    angles = timestep.to(dtype)[..., None] * torch.exp(exponent)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return nn_functional.pad(emb, (0, dim % 2))
