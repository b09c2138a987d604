"""Rectified-flow and TrigFlow time parameterisations (docs/math.md section 1).

RF time s in [0, 1] (x_s = (1 - s) x0 + s eps) and TrigFlow time t in [0, pi/2]
(x_t = cos t x0 + sin t eps) describe the same noise level through sigma = tan t = s / (1 - s).
"""

import math

import torch

HALF_PI = math.pi / 2


def timestep_scale(net) -> float:
    """What a velocity network's timestep input is in units of RF time: its family's
    ``TIMESTEP_SCALE`` (Cosmos: 1), or 1000 (Wan's, and the toy networks') where it states none."""
    return getattr(net, "TIMESTEP_SCALE", 1000.0)


def rf_to_trigflow(s: torch.Tensor) -> torch.Tensor:
    """TrigFlow time of RF time s: t = arctan(s / (1 - s)) (eq. 1.1); s = 1 maps to pi/2."""
    return torch.atan2(s, 1 - s)


def trigflow_to_rf(t: torch.Tensor) -> torch.Tensor:
    """RF time of TrigFlow time t: s = sin t / (cos t + sin t) (eq. 1.1)."""
    return torch.sin(t) / (torch.cos(t) + torch.sin(t))


def sigma_to_trigflow(sigma):
    """TrigFlow time of the EDM noise level sigma: t = arctan(sigma) (eq. 1.1)."""
    if isinstance(sigma, torch.Tensor):
        return torch.atan(sigma)
    return math.atan(sigma)


def shift_rf(s: torch.Tensor, shift: float) -> torch.Tensor:
    """RF time shift k s / (1 + (k - 1) s) (eq. 1.2); k > 1 moves time towards the noise end."""
    if shift <= 0:
        raise ValueError(f"the RF shift must be positive, got {shift}")
    return shift * s / (1 + (shift - 1) * s)


def check_trigflow_time(t: torch.Tensor) -> None:
    """Raise ValueError unless every t lies in (0, pi/2], where x0 and F predictions are defined."""
    if not torch.all((t > 0) & (t <= HALF_PI + 1e-6)):
        raise ValueError(
            f"TrigFlow time must lie in (0, pi/2], got values in [{t.min().item()}, {t.max().item()}]"
        )


def expand_like(coefficient: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a per-sample coefficient [B] as [B, 1, ..., 1] so that it broadcasts against x."""
    return coefficient.reshape(coefficient.shape[0], *([1] * (x.dim() - 1))).to(x.dtype)
