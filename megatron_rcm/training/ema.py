"""Power EMA of the student weights, EDM2 style (docs/math.md section 5)."""

import numpy as np
import torch


def power_ema_gamma(relative_std: float) -> float:
    """The exponent gamma of the power EMA whose averaging profile has this relative std.

    gamma is the real root of gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0
    (eq. 5.1, EDM2's eq. 3 solved for gamma); s = 0.1 gives gamma ~ 6.94.
    """
    if not 0 < relative_std < 12 ** -0.5:
        raise ValueError(f"relative std must lie in (0, 12^-1/2), got {relative_std}")
    s2 = relative_std ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s2, 12.0 - s2])
    real = roots[np.abs(roots.imag) < 1e-9].real
    return float(real.max())


class PowerEMA:
    """fp32 power EMA: after update k (k = 0, 1, ...) ema <- beta_k ema + (1 - beta_k) theta,
    beta_k = (1 - 1/(k + 1))^(gamma + 1), so the first update copies theta.
    Call update() on student iterations only; copy_to() writes the average into a model for export.
    """

    def __init__(self, model: torch.nn.Module, relative_std: float):
        self.gamma = power_ema_gamma(relative_std)
        self.num_updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    def beta(self, k: int) -> float:
        return (1 - 1 / (k + 1)) ** (self.gamma + 1)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        beta = self.beta(self.num_updates)
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach().float(), 1 - beta)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            p.copy_(self.shadow[name])
