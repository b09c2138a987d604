"""The rCM objective: the sCM term, the DMD regulariser and its fake-score critic on a typed recipe;
pure functions of TrigFlow denoisers and tensors (docs/math.md sections 3 and 4)."""

from .config import RCMConfig
from .dmd import dmd_loss, fake_score_loss, rollout_steps, student_rollout
from .rcm import Denoisers, IterationNoise, critic_loss, student_loss, student_loss_terms
from .scm import scm_loss, tangent_warmup_ratio

__all__ = [
    "Denoisers",
    "IterationNoise",
    "RCMConfig",
    "critic_loss",
    "dmd_loss",
    "fake_score_loss",
    "rollout_steps",
    "scm_loss",
    "student_loss",
    "student_loss_terms",
    "student_rollout",
    "tangent_warmup_ratio",
]
