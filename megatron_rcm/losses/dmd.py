"""The score-distillation (DMD-style) regulariser and its fake-score critic (docs/math.md section 4)."""

import math
from typing import Sequence

import torch

from megatron_rcm.diffusion.few_step import DEFAULT_MID_TIMES, MAX_STEPS, consistency_rollout, few_step_times
from megatron_rcm.diffusion.time import HALF_PI, check_trigflow_time, expand_like

DIRECTION_MIN_SCALE = 1e-5


def rollout_steps(student_step: int, max_steps: int = MAX_STEPS) -> int:
    """Number of rollout steps n in 1..max_steps, cycling with the student step counter (eq. 4.1)."""
    return student_step % max_steps + 1


def student_rollout(student, noises: Sequence[torch.Tensor], text: torch.Tensor,
                    mid_times: Sequence[float] = DEFAULT_MID_TIMES) -> torch.Tensor:
    """The rollout G: len(noises) student steps, t_0 = pi/2 then mid_times (eq. 4.1); grad through the last step."""
    return consistency_rollout(student, noises, few_step_times(len(noises), HALF_PI, mid_times), text)


def _noised(rollout, t_D, eps_D):
    check_trigflow_time(t_D)
    return expand_like(torch.cos(t_D), rollout) * rollout + expand_like(torch.sin(t_D), rollout) * eps_D


@torch.no_grad()
def dmd_direction(rollout, t_D, eps_D, text, teacher, fake_score):
    """d = (x0_fake(x_D) - x0_teacher_cfg(x_D)) / mean|G - x0_teacher_cfg(x_D)| in float64 (eq. 4.2).

    The mean is over all but the batch dimension, clipped below at 1e-5. Returns d (float64).
    """
    x_D = _noised(rollout.detach(), t_D, eps_D)
    x0_teacher = teacher.x0(x_D, t_D, text).double()
    x0_fake = fake_score.x0(x_D, t_D, text).double()
    scale = (rollout.detach().double() - x0_teacher).abs().flatten(1).mean(dim=1).clamp_min(DIRECTION_MIN_SCALE)
    return (x0_fake - x0_teacher) / expand_like(scale, x0_teacher)


def dmd_loss(rollout: torch.Tensor, t_D: torch.Tensor, eps_D: torch.Tensor, text: torch.Tensor,
             teacher, fake_score):
    """L_DMD = sum over C,T,H,W of (G - sg(G - d))^2, mean over the batch (eq. 4.3).

    ``rollout`` is G, the student rollout with grad (student_rollout); t_D ~ p_D, eps_D ~ N(0, I). The gradient
    2 d dG/dtheta moves G from the fake score's denoising towards the guided teacher's. Non-finite
    directions are zeroed per sample and counted. Returns (loss, diagnostics).
    """
    d = dmd_direction(rollout, t_D, eps_D, text, teacher, fake_score)
    finite = torch.isfinite(d).flatten(1).all(dim=1)
    d = torch.where(expand_like(finite, d).bool(), d, 0.0)
    target = (rollout.detach().double() - d)
    per_sample = (rollout.double() - target).pow(2).flatten(1).sum(dim=1)
    loss = torch.where(finite, per_sample, 0.0).mean()
    diagnostics = {
        "dmd/direction_norm": d.flatten(1).norm(dim=1).mean(),
        "dmd/nonfinite_direction": (~finite).sum(),
        "dmd/mean_t": t_D.double().mean(),
        "dmd/rollout_norm": rollout.detach().double().flatten(1).norm(dim=1).mean(),
    }
    return loss, diagnostics


def dmd_size_scale(numel: int, reference_numel: int) -> float:
    """sqrt(reference_numel / numel), 1 for reference_numel 0: the factor on L_DMD that keeps the
    DMD/sCM gradient ratio of a latent of ``numel`` elements per sample at that of ``reference_numel``
    (docs/math.md section 4, "Balance": the sum of eq. 4.3 has a gradient of norm ~ sqrt(numel),
    the normalised sCM target one of norm ~ 1)."""
    if numel < 1 or reference_numel < 0:
        raise ValueError(f"numel must be >= 1 and reference_numel >= 0, got {numel} and {reference_numel}")
    return 1.0 if reference_numel == 0 else math.sqrt(reference_numel / numel)


def fake_score_loss(rollout: torch.Tensor, t_D: torch.Tensor, eps_D: torch.Tensor, text: torch.Tensor,
                    fake_score):
    """L_fake = sum over C,T,H,W of (G - x0_fake(x_D))^2 / sin^2 t_D, mean over the batch (eq. 4.4).

    ``rollout`` is G, a student rollout made without grad; the fake-score net learns to denoise the student's
    distribution. Returns (loss, diagnostics).
    """
    rollout = rollout.detach()
    x0_fake = fake_score.x0(_noised(rollout, t_D, eps_D), t_D, text)
    per_sample = (rollout - x0_fake).double().pow(2).flatten(1).sum(dim=1) / torch.sin(t_D).double() ** 2
    diagnostics = {
        "fake_score/mean_t": t_D.double().mean(),
        "fake_score/nonfinite": (~torch.isfinite(per_sample)).sum(),
    }
    return per_sample.mean(), diagnostics
