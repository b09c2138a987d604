"""Cosmos-Predict2 DiT layers on megatron-core, each with one ``forward(..., tangent)`` for forward and JVP.

Activations are sequence-first [S, B, C]; conventions of ``megatron_rcm.models.tangent`` apply
(``tangent=True``: primal and tangent stacked on dim 1). The math is diffusers'
``CosmosTransformer3DModel`` as ``Cosmos2TextToImagePipeline`` runs it: every linear without
a bias, adaLN modulation from a low-rank (LoRA) projection of the timestep embedding plus a
shared 3 x hidden term, RMSNorm per head on q and k (one weight shared by the heads), RoPE in
the rotate-half layout, exact GELU.

Replicated parameters follow ``models.layers`` (``sequence_parallel`` under SP). The q/k norm
weights are named ``q_layernorm`` / ``k_layernorm``: every TP rank's heads contribute to their
gradient, which megatron's ``finalize_model_grads`` sums over TP for such names when
``config.qk_layernorm`` is set (``CosmosConfig`` sets it).
"""

import torch
import torch.nn.functional as nn_functional
from megatron.core.transformer.module import MegatronModule

from .. import elementwise
from ..attention import cross_attention, self_attention
from ..layers import AttentionProjections, column_linear, param_device, replicated_linear, row_linear, timestep_sinusoid
from ..tangent import compute_dtype, linear, linear_parts, pointwise, upcast


def _ones(config, size):
    return torch.nn.Parameter(torch.ones(size, device=param_device(config), dtype=config.params_dtype))


class TimeEmbedding(MegatronModule):
    """timestep -> (temb [1, B, 3 dim], normalised embedding [1, B, dim]); diffusers' ``CosmosEmbedding``."""

    def __init__(self, config):
        super().__init__(config)
        dim, sp = config.hidden_size, config.sequence_parallel
        self.linear_1 = replicated_linear(config, dim, dim, sp, bias=False)
        self.linear_2 = replicated_linear(config, dim, 3 * dim, sp, bias=False)
        self.norm_weight = _ones(config, dim)
        self.norm_weight.sequence_parallel = sp

    def forward(self, timestep, tangent):
        dtype, eps = self.norm_weight.dtype, self.config.layernorm_epsilon
        proj = pointwise(lambda t: timestep_sinusoid(t, self.config.hidden_size, compute_dtype(dtype)).to(dtype),
                         timestep, tangent=tangent)
        hidden = pointwise(nn_functional.silu, linear(self.linear_1, proj, tangent), tangent=tangent)
        temb = linear(self.linear_2, hidden, tangent)

        def rms_norm(p):
            a = upcast(p)
            return (a * torch.rsqrt(a.square().mean(-1, keepdim=True) + eps)).to(dtype) * self.norm_weight

        return temb, pointwise(rms_norm, proj, tangent=tangent)


class LoRAModulation(MegatronModule):
    """``parts`` x [1, B, dim] modulation = linear_2(linear_1(silu(embedding))) + temb[:parts*dim]
    (diffusers' ``CosmosAdaLayerNormZero`` with parts=3, ``CosmosAdaLayerNorm`` with parts=2)."""

    def __init__(self, config, parts):
        super().__init__(config)
        dim, sp, self.parts = config.hidden_size, config.sequence_parallel, parts
        self.linear_1 = replicated_linear(config, dim, config.adaln_lora_dim, sp, bias=False)
        self.linear_2 = replicated_linear(config, config.adaln_lora_dim, parts * dim, sp, bias=False)

    def forward(self, silu_embedding, temb, tangent):
        """-> [1, B, parts, dim] (shift, scale[, gate]); linear in its inputs, so stacked inputs need nothing else."""
        m = linear(self.linear_2, linear(self.linear_1, silu_embedding, tangent), tangent)
        return (m + temb[..., : m.shape[-1]]).unflatten(-1, (self.parts, -1))


class HeadRMSNorm(torch.nn.Module):
    """RMSNorm of each head of a TP-sharded projection (weight [head dim], shared by the heads),
    split into heads and optionally rotated by RoPE (rotate-half layout)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.weight = _ones(config, config.head_dim)

    def forward(self, y, tangent, rope=(None, None)):
        config = self.config
        return elementwise.head_rms_norm(y, self.weight, config.qk_layernorm_epsilon, config.head_dim, *rope,
                                         tangent=tangent, compiled=config.fuse_elementwise)


class SelfAttention(AttentionProjections):
    def __init__(self, config):
        super().__init__(config, bias=False)
        self.q_layernorm = HeadRMSNorm(config)
        self.k_layernorm = HeadRMSNorm(config)

    def forward(self, x, rope, layout, tangent):
        """-> (output, None): the projection has no bias."""
        config, width = self.config, self.heads * self.head_dim
        qk, v = linear_parts(self.qkv, x)[0].split([2 * width, width], dim=-1)
        # both norms in one call (the weights are the norm modules')
        q, k = elementwise.qk_head_rms_norm(qk, self.q_layernorm.weight, self.k_layernorm.weight,
                                            config.qk_layernorm_epsilon, self.head_dim, *rope, tangent=tangent,
                                            compiled=config.fuse_elementwise)
        v = v.unflatten(-1, (self.heads, self.head_dim))
        return self.project(self_attention(q, k, v, layout, tangent, self.head_dim**-0.5))


class CrossAttention(AttentionProjections):
    def __init__(self, config):
        super().__init__(config, text_dim=config.text_dim, bias=False)
        self.q_layernorm = HeadRMSNorm(config)
        self.k_layernorm = HeadRMSNorm(config)

    def forward(self, x, text, tangent):
        """Queries from x, keys/values from the text-encoder states [L, B, text_dim] (no tangent) -> (output, None)."""
        q = self.q_layernorm(linear_parts(self.q, x)[0], tangent)
        k, v = linear_parts(self.kv, text)[0].chunk(2, dim=-1)
        k, v = self.k_layernorm(k, False), v.unflatten(-1, (self.heads, self.head_dim))
        return self.project(cross_attention(q, k, v, tangent, self.head_dim**-0.5))


class FeedForward(MegatronModule):
    def __init__(self, config):
        super().__init__(config)
        self.fc1 = column_linear(config, config.hidden_size, config.ffn_hidden_size, bias=False)
        self.fc2 = row_linear(config, config.ffn_hidden_size, config.hidden_size, bias=False)

    def forward(self, x, tangent):
        h = elementwise.bias_gelu_erf(*linear_parts(self.fc1, x), tangent=tangent,
                                      compiled=self.config.fuse_elementwise)
        return linear_parts(self.fc2, h)


class CosmosBlock(MegatronModule):
    """Modulated self-attention, cross-attention to the text and GELU FFN, each gated
    (diffusers' ``CosmosTransformerBlock`` without its ControlNet and image-context branches)."""

    def __init__(self, config):
        super().__init__(config)
        self.norm1, self.norm2, self.norm3 = (LoRAModulation(config, 3) for _ in range(3))
        self.attn1 = SelfAttention(config)
        self.attn2 = CrossAttention(config)
        self.ff = FeedForward(config)

    def forward(self, x, text, silu_embedding, temb, rope, layout, tangent):
        eps, fused = self.config.layernorm_epsilon, self.config.fuse_elementwise
        shift, scale, gate = self.norm1(silu_embedding, temb, tangent).unbind(2)
        update = self.attn1(elementwise.modulate(x, shift, scale, eps, tangent=tangent, compiled=fused), rope,
                            layout, tangent)
        # each residual add is fused with the next sublayer's modulation of its result
        for norm, sublayer in ((self.norm2, lambda h: self.attn2(h, text, tangent)),
                               (self.norm3, lambda h: self.ff(h, tangent))):
            shift, scale, next_gate = norm(silu_embedding, temb, tangent).unbind(2)
            x, h = elementwise.gated_residual_modulate(x, *update, gate, shift, scale, eps, tangent=tangent,
                                                       compiled=fused)
            update, gate = sublayer(h), next_gate
        return elementwise.bias_gated_residual(x, *update, gate, tangent=tangent, compiled=fused)
