"""The rCM objective (docs/math.md section 4): the student's loss and the fake score's, with diagnostics.

Pure functions of three TrigFlow denoisers, the recipe and the iteration's random draws; no
optimizer, no process group. ``training.step`` and ``examples/distill_2d.py`` both call them.
"""

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import torch

from ..diffusion.denoiser import TrigFlowDenoiser
from .config import RCMConfig
from .dmd import dmd_loss, dmd_size_scale, fake_score_loss, rollout_steps, student_rollout
from .scm import scm_loss, tangent_warmup_ratio


class Denoisers(NamedTuple):
    """The networks the objective reads, each as a TrigFlow denoiser."""

    teacher: TrigFlowDenoiser
    """Frozen, around classifier-free guidance at ``guidance_scale``."""
    student: TrigFlowDenoiser
    fake_score: TrigFlowDenoiser
    dmd_teacher: Optional[TrigFlowDenoiser] = None
    """The same teacher at ``dmd_guidance_scale`` for the DMD direction; None: ``teacher``."""


@dataclass
class IterationNoise:
    """The random draws of one iteration; a term that does not run may leave its own as None."""

    eps: Optional[torch.Tensor]
    """sCM noise, like x0."""
    t_scm: Optional[torch.Tensor]
    """[B] sCM times, drawn from p_G (eq. 3.5)."""
    rollout: Sequence[torch.Tensor]
    """At least as many noises as the rollout takes steps (eq. 4.1), each like x0."""
    t_dmd: torch.Tensor
    """[B] DMD noise levels, drawn from p_D (eq. 4.5)."""
    eps_dmd: torch.Tensor
    """DMD noise, like x0."""


def _rollout(student, config: RCMConfig, noise: IterationNoise, text, updates: int):
    steps = rollout_steps(updates, config.max_rollout_steps)
    return student_rollout(student, noise.rollout[:steps], text, config.mid_times)


def student_loss_terms(denoisers: Denoisers, config: RCMConfig, x0: torch.Tensor, text: torch.Tensor,
                       noise: IterationNoise, iteration: int, student_updates: int):
    """The terms of ``student_loss``, each computed only when the caller asks for it (a generator):
    scm_weight L_sCM, then dmd_weight L_DMD times ``dmd_size_scale`` once the tangent warm-up is over.

    A caller that backpropagates each term before it asks for the next frees the sCM pass's graph
    before the DMD rollout builds its own, so one student graph is alive at a time instead of two
    (the trainer does; ``planning.memory`` counts on it). Yields (weighted float64 loss,
    diagnostics of detached 0-dim tensors); a term without a finite sample has no graph.
    """
    if config.scm_weight > 0:
        ratio = tangent_warmup_ratio(iteration, config.tangent_warmup)
        loss_scm, diag = scm_loss(denoisers.student, denoisers.teacher, x0, noise.eps, noise.t_scm, text, ratio,
                                  config.dcm_step)
        yield config.scm_weight * loss_scm, {**diag, "loss/scm": loss_scm.detach()}
    if config.uses_dmd(iteration):
        rollout = _rollout(denoisers.student, config, noise, text, student_updates)
        real_score = denoisers.teacher if denoisers.dmd_teacher is None else denoisers.dmd_teacher
        loss_dmd, diag = dmd_loss(rollout, noise.t_dmd, noise.eps_dmd, text, real_score, denoisers.fake_score)
        size_scale = dmd_size_scale(x0[0].numel(), config.dmd_reference_numel)
        yield config.dmd_weight * size_scale * loss_dmd, {**diag, "loss/dmd": loss_dmd.detach()}


def student_loss(denoisers: Denoisers, config: RCMConfig, x0: torch.Tensor, text: torch.Tensor,
                 noise: IterationNoise, iteration: int, student_updates: int):
    """scm_weight L_sCM (eq. 3.4) + dmd_weight L_DMD (eq. 4.3, times ``dmd_size_scale``) once the
    tangent warm-up is over: the sum of ``student_loss_terms``, with both graphs alive.

    ``iteration`` sets the warm-up ratio (eq. 3.2), ``student_updates`` (the student updates made
    so far) the rollout length (eq. 4.1). Returns (float64 loss, diagnostics of detached 0-dim
    tensors). The loss has no graph when no sample gave a finite sCM term and DMD is off.
    """
    loss = torch.zeros((), dtype=torch.float64, device=x0.device)
    diagnostics = {}
    for term, diag in student_loss_terms(denoisers, config, x0, text, noise, iteration, student_updates):
        loss = loss + term
        diagnostics.update(diag)
    diagnostics["loss/student"] = loss.detach()
    return loss, diagnostics


def critic_loss(denoisers: Denoisers, config: RCMConfig, text: torch.Tensor, noise: IterationNoise,
                critic_updates: int):
    """L_fake (eq. 4.4) on a student rollout made without grad; ``critic_updates`` (the fake-score
    updates made so far) sets its length. Returns (loss, diagnostics)."""
    with torch.no_grad():
        rollout = _rollout(denoisers.student, config, noise, text, critic_updates)
    loss, diagnostics = fake_score_loss(rollout, noise.t_dmd, noise.eps_dmd, text, denoisers.fake_score)
    diagnostics["loss/fake_score"] = loss.detach()
    return loss, diagnostics
