"""A tiny MLP velocity network with the Wan interface, for toy problems and tests.

``net(x [B, ...], timestep [B] in 0..1000, text [B, L, D]) -> v`` and an exact ``jvp`` through
torch.func.jvp (fine for a small net; the Wan model provides its own tangent pass).
"""

import math

import torch
from torch import nn


def timestep_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the RF timestep (0..1000), as DiTs use."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=timestep.dtype,
                                                              device=timestep.device) / half)
    angles = timestep[:, None] * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class MLPVelocity(nn.Module):
    def __init__(self, data_dim: int, text_dim: int, hidden: int = 128, depth: int = 3,
                 time_dim: int = 32):
        super().__init__()
        self.time_dim = time_dim
        widths = [data_dim + text_dim + time_dim] + [hidden] * depth
        layers = []
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.SiLU()]
        layers.append(nn.Linear(hidden, data_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        features = torch.cat([x.flatten(1), text.mean(dim=1),
                              timestep_embedding(timestep, self.time_dim)], dim=1)
        return self.mlp(features).reshape(x.shape)

    @torch.no_grad()
    def jvp(self, x, timestep, text, x_tangent, timestep_tangent):
        return torch.func.jvp(lambda a, b: self(a, b, text), (x, timestep), (x_tangent, timestep_tangent))
