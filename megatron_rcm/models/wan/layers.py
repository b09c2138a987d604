"""Wan2.1 DiT layers on megatron-core, each with one ``forward(..., tangent)`` for forward and JVP.

Activations are sequence-first [S, B, C]; under sequence parallelism the token stream outside
the tensor-parallel regions is split over the TP ranks. Conventions of
``megatron_rcm.models.tangent`` apply (``tangent=True``: primal and tangent stacked on dim 1).
The math is diffusers' ``WanTransformer3DModel`` (Wan2.1 T2V), including where it computes in
float32 (``upcast``: float32, or float64 for a float64 model).

Replicated parameters that see only this rank's share of the tokens under sequence parallelism
carry ``sequence_parallel = config.sequence_parallel`` (see ``models.layers``). Under context
parallelism every gradient is a per-rank partial sum, reduced with the data-parallel gradients
over Megatron's data+context group.
"""

import torch
import torch.nn.functional as nn_functional
from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
)
from megatron.core.transformer.module import MegatronModule

from .. import elementwise
from ..attention import cross_attention, self_attention
from ..layers import AttentionProjections, column_linear, param_device, replicated_linear, row_linear, timestep_sinusoid
from ..tangent import add_bias, compute_dtype, linear, linear_parts, pointwise, upcast


class ConditionEmbedder(MegatronModule):
    """Timestep -> (temb, 6-way modulation); text -> context. Names follow diffusers."""

    def __init__(self, config):
        super().__init__(config)
        dim, sp = config.hidden_size, config.sequence_parallel
        self.time_embedder = torch.nn.Module()
        self.time_embedder.linear_1 = replicated_linear(config, config.freq_dim, dim, sp)
        self.time_embedder.linear_2 = replicated_linear(config, dim, dim, sp)
        self.time_proj = replicated_linear(config, dim, 6 * dim, sp)
        self.text_embedder = torch.nn.Module()
        # the text embedding feeds only the (non-sequence-parallel) text key/value projections
        self.text_embedder.linear_1 = replicated_linear(config, config.text_dim, dim, False)
        self.text_embedder.linear_2 = replicated_linear(config, dim, dim, False)

    def time(self, timestep, tangent):
        """timestep [1, B] (stacked) -> temb [1, B, dim], modulation [1, B, 6, dim]."""
        dtype = self.time_embedder.linear_1.weight.dtype
        emb = pointwise(lambda t: timestep_sinusoid(t, self.config.freq_dim, compute_dtype(dtype)).to(dtype),
                        timestep, tangent=tangent)
        emb = linear(self.time_embedder.linear_1, emb, tangent)
        emb = pointwise(nn_functional.silu, emb, tangent=tangent)
        temb = linear(self.time_embedder.linear_2, emb, tangent)
        modulation = linear(self.time_proj, pointwise(nn_functional.silu, temb, tangent=tangent), tangent)
        return temb, modulation.unflatten(-1, (6, -1))

    def text(self, text):
        """text [L, B, text_dim] -> context [L, B, dim] (text has no tangent)."""
        h = nn_functional.gelu(self.text_embedder.linear_1(text), approximate="tanh")
        return self.text_embedder.linear_2(h)


class HeadsRMSNorm(torch.nn.Module):
    """RMSNorm over all heads (diffusers' ``rms_norm_across_heads``) of a TP-sharded projection
    (its output and bias), split into heads and optionally rotated by RoPE.

    The sum of squares of the local channels is all-reduced over the TP group, forward and
    backward alike (every rank's channels use the total); in tangent mode the stacked
    (sum x^2, sum 2 x dx) pair shares that one all-reduce.
    """

    def __init__(self, config, local_dim):
        super().__init__()
        self.config = config
        self.weight = torch.nn.Parameter(torch.ones(local_dim, device=param_device(config), dtype=config.params_dtype))
        # this rank's channels of the weight: megatron's gradient norm then counts every rank's slice
        set_tensor_model_parallel_attributes(self.weight, is_parallel=True, dim=0, stride=1)

    def forward(self, y, bias, tangent, rope=(None, None)):
        config = self.config
        squares = elementwise.bias_sum_squares(y, bias, tangent=tangent, compiled=config.fuse_elementwise)
        if config.tensor_model_parallel_size > 1:
            squares = reduce_from_tensor_model_parallel_region(copy_to_tensor_model_parallel_region(squares))
        return elementwise.bias_rms_normalise(y, bias, squares, self.weight, config.hidden_size,
                                              config.layernorm_epsilon, config.head_dim, *rope, tangent=tangent,
                                              compiled=config.fuse_elementwise)


class SelfAttention(AttentionProjections):
    def __init__(self, config):
        super().__init__(config)
        local_dim = config.hidden_size // config.tensor_model_parallel_size
        self.norm_q = HeadsRMSNorm(config, local_dim)
        self.norm_k = HeadsRMSNorm(config, local_dim)

    def forward(self, x, rope, layout, tangent):
        """-> (output without its bias, the bias): the caller adds the bias in its residual."""
        qkv, bias = linear_parts(self.qkv, x)
        (q, k, v), (q_bias, k_bias, v_bias) = qkv.chunk(3, dim=-1), bias.chunk(3)
        q, k = self.norm_q(q, q_bias, tangent, rope), self.norm_k(k, k_bias, tangent, rope)
        v = add_bias(v, v_bias, tangent).unflatten(-1, (self.heads, self.head_dim))
        return self.project(self_attention(q, k, v, layout, tangent, self.head_dim**-0.5))


class CrossAttention(AttentionProjections):
    def __init__(self, config):
        # the keys and values come from the text embedding (hidden_size wide)
        super().__init__(config, text_dim=config.hidden_size)
        local_dim = config.hidden_size // config.tensor_model_parallel_size
        self.norm_q = HeadsRMSNorm(config, local_dim)
        self.norm_k = HeadsRMSNorm(config, local_dim)

    def forward(self, x, context, tangent):
        """-> (output without its bias, the bias): the caller adds the bias in its residual."""
        q = self.norm_q(*linear_parts(self.q, x), tangent)
        kv, kv_bias = linear_parts(self.kv, context)
        (k, v), (k_bias, v_bias) = kv.chunk(2, dim=-1), kv_bias.chunk(2)
        k = self.norm_k(k, k_bias, False)
        v = (v + v_bias).unflatten(-1, (self.heads, self.head_dim))
        return self.project(cross_attention(q, k, v, tangent, self.head_dim**-0.5))


class FeedForward(MegatronModule):
    def __init__(self, config):
        super().__init__(config)
        self.fc1 = column_linear(config, config.hidden_size, config.ffn_hidden_size)
        self.fc2 = row_linear(config, config.ffn_hidden_size, config.hidden_size)

    def forward(self, x, tangent):
        """-> (output without its bias, the bias): the caller adds the bias in its residual."""
        h = elementwise.linear_bias_gelu(self.fc1, x, tangent=tangent, compiled=self.config.fuse_elementwise)
        return linear_parts(self.fc2, h)


class WanBlock(MegatronModule):
    """adaLN-modulated self-attention, cross-attention to the text, GELU-tanh FFN (diffusers' WanTransformerBlock)."""

    def __init__(self, config):
        super().__init__(config)
        dim, eps = config.hidden_size, config.layernorm_epsilon
        self.eps = eps
        self.attn1 = SelfAttention(config)
        self.attn2 = CrossAttention(config)
        self.ffn = FeedForward(config)
        self.norm2 = None
        if config.cross_attn_norm:
            self.norm2 = torch.nn.LayerNorm(dim, eps, device=param_device(config), dtype=config.params_dtype)
            for p in self.norm2.parameters():
                p.sequence_parallel = config.sequence_parallel
        self.scale_shift_table = torch.nn.Parameter(
            torch.randn(1, 6, dim, device=param_device(config), dtype=config.params_dtype) / dim**0.5)
        self.scale_shift_table.sequence_parallel = config.sequence_parallel

    def forward(self, x, context, modulation, rope, layout, tangent):
        table, eps, fused = self.scale_shift_table, self.eps, self.config.fuse_elementwise
        mod = pointwise(lambda m: table + upcast(m), modulation, tangent=tangent)
        shift, scale, gate, c_shift, c_scale, c_gate = mod.unbind(2)

        h = elementwise.modulate(x, shift, scale, eps, tangent=tangent, compiled=fused)
        x = elementwise.bias_gated_residual(x, *self.attn1(h, rope, layout, tangent), gate, tangent=tangent,
                                            compiled=fused)
        h = x
        if self.norm2 is not None:
            h = elementwise.layer_norm(x, self.norm2.weight, self.norm2.bias, eps, tangent=tangent, compiled=fused)
        x = elementwise.bias_residual(x, *self.attn2(h, context, tangent), tangent=tangent, compiled=fused)

        h = elementwise.modulate(x, c_shift, c_scale, eps, tangent=tangent, compiled=fused)
        return elementwise.bias_gated_residual(x, *self.ffn(h, tangent), c_gate, tangent=tangent, compiled=fused)
