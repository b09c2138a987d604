"""Few-step consistency sampling: the rCM sampler (eq. 6.1) and the student rollout (eq. 4.1)."""

import math
from typing import Sequence

import torch

from megatron_rcm.diffusion.time import HALF_PI, sigma_to_trigflow

DEFAULT_MID_TIMES = (1.5, 1.4, 1.0)
DEFAULT_SIGMA_MAX = 80.0
MAX_STEPS = 4


def few_step_times(num_steps: int, t_max: float, mid_times: Sequence[float] = DEFAULT_MID_TIMES):
    """[t_max, *mid_times][:num_steps] + [0] (eqs. 4.1 and 6.1); num_steps in 1..4."""
    if not 1 <= num_steps <= min(MAX_STEPS, len(mid_times) + 1):
        raise ValueError(f"the student takes 1 to {min(MAX_STEPS, len(mid_times) + 1)} steps, got {num_steps}")
    times = [float(t_max), *map(float, mid_times)][:num_steps] + [0.0]
    if not (0 < times[0] <= HALF_PI + 1e-12 and all(a > b for a, b in zip(times, times[1:]))):
        raise ValueError(f"times must fall strictly from (0, pi/2] to 0, got {times}")
    return times


def consistency_rollout(denoiser, noises: Sequence[torch.Tensor], times: Sequence[float],
                        text: torch.Tensor) -> torch.Tensor:
    """Multistep consistency sampling; returns the x0 prediction of the last step.

    x = noises[0] at times[0]; each step x0 = student_x0(x, t_i), then
    x <- cos t_{i+1} x0 + sin t_{i+1} noises[i+1] (eq. 4.1 / 6.1). All steps but the last run
    without grad, so gradient (if enabled by the caller) flows through the last step only.
    """
    num_steps = len(times) - 1
    if len(noises) != num_steps:
        raise ValueError(f"{num_steps} steps need {num_steps} noise tensors, got {len(noises)}")
    x = noises[0]
    batch = x.shape[0]
    for i in range(num_steps):
        t = torch.full((batch,), times[i], dtype=torch.float64, device=x.device)
        if i == num_steps - 1:
            return denoiser.x0(x, t, text)
        with torch.no_grad():
            x0 = denoiser.x0(x, t, text)
            x = math.cos(times[i + 1]) * x0 + math.sin(times[i + 1]) * noises[i + 1]


@torch.no_grad()
def sample_few_step(denoiser, noise: torch.Tensor, text: torch.Tensor, num_steps: int,
                    sigma_max: float = DEFAULT_SIGMA_MAX, mid_times: Sequence[float] = DEFAULT_MID_TIMES,
                    generator=None) -> torch.Tensor:
    """The rCM few-step sampler (eq. 6.1): start from noise at t_0 = arctan(sigma_max)."""
    times = few_step_times(num_steps, sigma_to_trigflow(sigma_max), mid_times)
    fresh = [torch.randn(noise.shape, generator=generator, dtype=noise.dtype, device=noise.device)
             for _ in range(num_steps - 1)]
    return consistency_rollout(denoiser, [noise, *fresh], times, text)
