"""The Wan2.1 T2V DiT on megatron-core (``VideoDiT``: full tensors in and out, TP/SP/CP inside,
forward and exact JVP).

``model(x, t, text)`` is diffusers' ``WanTransformer3DModel(x, t, text).sample`` (velocity) for
timesteps t in 0..1000; ``model.jvp(x, t, text, x_t, t_t)`` returns (velocity, its directional
derivative).
"""

import math

import torch

from .. import elementwise
from ..dit import VideoDiT
from ..layers import param_device, replicated_linear
from ..tangent import linear, pointwise
from . import weight_map
from .config import WanConfig
from .layers import ConditionEmbedder, WanBlock


class WanModel(VideoDiT):
    TIMESTEP_SCALE = 1000.0
    def __init__(self, config: WanConfig):
        super().__init__(config)
        dim, patch_volume = config.hidden_size, math.prod(config.patch_size)
        sp = config.sequence_parallel
        self.patch_embedding = replicated_linear(config, config.in_channels * patch_volume, dim, sp)
        self.condition_embedder = ConditionEmbedder(config)
        self.blocks = torch.nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.scale_shift_table = torch.nn.Parameter(
            torch.randn(1, 2, dim, device=param_device(config), dtype=config.params_dtype) / dim**0.5)
        self.scale_shift_table.sequence_parallel = sp
        self.proj_out = replicated_linear(config, dim, config.out_channels * patch_volume, sp)

    def parameter_table(self):
        return weight_map.wan_parameters(self.config)

    def _rope_thetas(self):
        return (self.config.rope_theta,) * 3

    def _condition(self, time, text, tangent):
        temb, modulation = self.condition_embedder.time(time, tangent)
        return (self.condition_embedder.text(text), modulation), temb

    def _head(self, h, temb, tangent):
        table = self.scale_shift_table
        shift, scale = pointwise(lambda e: table + e.unsqueeze(2), temb, tangent=tangent).unbind(2)
        h = elementwise.modulate(h, shift, scale, self.config.layernorm_epsilon, tangent=tangent,
                                 compiled=self.config.fuse_elementwise)
        return linear(self.proj_out, h, tangent)
