"""Training-time distributions: p_G for the sCM term and p_D for the DMD noise level."""

import torch

from megatron_rcm.diffusion.time import rf_to_trigflow, shift_rf


def sample_time_scm(batch: int, p_mean: float, p_std: float, *, generator=None,
                    dtype=torch.float64, device=None) -> torch.Tensor:
    """p_G (docs/math.md eq. 3.5): log sigma ~ N(p_mean, p_std^2), t = arctan(sigma).

    p_mean is 0.7 for Wan 1.3B and 1.5 for Wan 14B.
    """
    log_sigma = p_mean + p_std * torch.randn(batch, generator=generator, dtype=dtype, device=device)
    return torch.atan(torch.exp(log_sigma))


def sample_time_dmd(batch: int, shift: float, *, generator=None, dtype=torch.float64,
                    device=None) -> torch.Tensor:
    """p_D (docs/math.md eq. 4.5): s = shift(u, k) with u ~ U[0, 1), t = arctan(s / (1 - s)).

    u = 0 gives t = 0, where the x0 prediction is the identity: it is redrawn, a measure-zero event.
    """
    u = torch.rand(batch, generator=generator, dtype=dtype, device=device)
    while bool((u == 0).any()):
        u = torch.where(u == 0, torch.rand(batch, generator=generator, dtype=dtype, device=device), u)
    return rf_to_trigflow(shift_rf(u, shift))
