"""The Cosmos-Predict2 text-to-image DiT on megatron-core (``VideoDiT``: full tensors in and out,
TP/SP/CP inside, forward and exact JVP).

``model(x, t, text)`` is diffusers' ``CosmosTransformer3DModel(x, t, text, padding_mask=0).sample``
for latents x [B, 16, T, H, W] (T = 1 for images), the ``timestep`` values t [B] the pipeline
passes (t = sigma / (sigma + 1) in 0..1) and T5 states [B, L, 1024]; ``model.jvp(x, t, text,
x_t, t_t)`` returns (output, its directional derivative). ``padding_mask`` [1 or B, 1, H, W] at
the latent size is the extra input channel; the pipeline's is all zero, the default.
"""

import math

import torch
import torch.nn.functional as nn_functional

from .. import elementwise
from ..dit import VideoDiT
from ..layers import replicated_linear
from ..tangent import linear, pointwise
from .config import CosmosConfig
from .layers import CosmosBlock, LoRAModulation, TimeEmbedding
from .weight_map import cosmos_parameters


class CosmosModel(VideoDiT):
    TIMESTEP_SCALE = 1.0  # the pipeline's t = sigma / (sigma + 1) itself
    PROJ_OUT_ORDER = "hwt"

    def __init__(self, config: CosmosConfig):
        super().__init__(config)
        dim, patch_volume, sp = config.hidden_size, math.prod(config.patch_size), config.sequence_parallel
        in_channels = config.in_channels + int(config.concat_padding_mask)
        self.patch_embedding = replicated_linear(config, in_channels * patch_volume, dim, sp, bias=False)
        self.time_embedder = TimeEmbedding(config)
        self.blocks = torch.nn.ModuleList(CosmosBlock(config) for _ in range(config.num_layers))
        self.norm_out = LoRAModulation(config, 2)
        self.proj_out = replicated_linear(config, dim, config.out_channels * patch_volume, sp, bias=False)

    def forward(self, hidden_states, timestep, encoder_hidden_states, padding_mask=None):
        """Output [B, C_out, T, H, W] for latents [B, C, T, H, W], timesteps [B] and text [B, L, text_dim]."""
        mask = self._mask_channel(hidden_states, padding_mask)
        return self._run(hidden_states, timestep, encoder_hidden_states, None, None, mask)

    @torch.no_grad()
    def jvp(self, hidden_states, timestep, encoder_hidden_states, hidden_states_t, timestep_t, padding_mask=None):
        """(output, d output) along (hidden_states_t, timestep_t); the text and padding mask are held fixed."""
        mask = self._mask_channel(hidden_states, padding_mask)
        return self._jvp(hidden_states, timestep, encoder_hidden_states, hidden_states_t, timestep_t, mask)

    def parameter_table(self):
        return cosmos_parameters(self.config)

    def _mask_channel(self, x, padding_mask):
        """The padding mask as one more latent channel [B, 1, T, H, W] (zeros by default)."""
        if not self.config.concat_padding_mask:
            if padding_mask is not None:
                raise ValueError("this Cosmos config has concat_padding_mask=False: pass no padding_mask")
            return None
        if x.dim() != 5:
            return None  # _check_inputs reports the shape
        b, _, t, h, w = x.shape
        if padding_mask is None:
            return x.new_zeros(b, 1, t, h, w)
        if padding_mask.dim() != 4 or padding_mask.shape[0] not in (1, b) or padding_mask.shape[1:] != (1, h, w):
            raise ValueError(f"padding_mask must be [1 or {b}, 1, {h}, {w}] (the latent size), "
                             f"got {tuple(padding_mask.shape)}")
        return padding_mask.to(x.dtype)[:, :, None].expand(b, 1, t, h, w)

    def _rope_thetas(self):
        hd = self.config.head_dim
        dims = (hd - 4 * (hd // 6), 2 * (hd // 6), 2 * (hd // 6))
        return tuple(10000.0 * s ** (d / (d - 2)) for s, d in zip(self.config.rope_scale, dims))

    def _condition(self, time, text, tangent):
        temb, embedding = self.time_embedder(time, tangent)
        silu_embedding = pointwise(nn_functional.silu, embedding, tangent=tangent)
        return (text, silu_embedding, temb), (silu_embedding, temb)

    def _head(self, h, cond, tangent):
        shift, scale = self.norm_out(*cond, tangent).unbind(2)
        h = elementwise.modulate(h, shift, scale, self.config.layernorm_epsilon, tangent=tangent,
                                 compiled=self.config.fuse_elementwise)
        return linear(self.proj_out, h, tangent)
