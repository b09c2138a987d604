"""Linear layers every model family builds from: replicated ``nn.Linear`` and megatron-core's
column/row-parallel linears (or Transformer Engine's), the projections around attention, plus
the sinusoidal timestep embedding.

Replicated parameters that see only this rank's share of the tokens under sequence parallelism
carry ``sequence_parallel = True``: as in Megatron, their gradients are summed over the TP group
after the backward (``finalize_model_grads``).
"""

import dataclasses
import math

import torch
import torch.nn.functional as nn_functional
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.module import MegatronModule

from .tangent import linear_parts


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


class AttentionProjections(MegatronModule):
    """The linears around a DiT attention: this rank's heads, the column-parallel input projection
    and the row-parallel output projection. Self-attention (``text_dim=None``) has one fused
    ``qkv`` whose output on each rank is [q, k, v] of the rank's heads; cross-attention has ``q``
    from the tokens and ``kv`` from the text states [L, B, text_dim], which every rank holds
    whole, so ``kv`` gathers no sequence under sequence parallelism."""

    def __init__(self, config, text_dim=None, bias=True):
        super().__init__(config)
        dim, tp = config.hidden_size, config.tensor_model_parallel_size
        self.heads, self.head_dim = config.num_attention_heads // tp, config.head_dim
        if text_dim is None:
            self.qkv = column_linear(config, dim, 3 * dim, bias=bias)
        else:
            self.q = column_linear(config, dim, dim, bias=bias)
            self.kv = column_linear(dataclasses.replace(config, sequence_parallel=False), text_dim, 2 * dim,
                                    bias=bias)
        self.proj = row_linear(config, dim, dim, bias=bias)

    def project(self, out):
        """(the output projection of attention output [S, B, heads, head dim] without its bias, the bias)."""
        return linear_parts(self.proj, out.flatten(-2))


def timestep_sinusoid(timestep, dim, dtype):
    """diffusers' ``get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0)`` in ``dtype``."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=dtype, device=timestep.device) / half
    angles = timestep.to(dtype)[..., None] * torch.exp(exponent)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return nn_functional.pad(emb, (0, dim % 2))
