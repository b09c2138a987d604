"""Which network an rCM iteration updates, and the loss weights (rcm-math.md section 4)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RCMSchedule:
    """Student / fake-score alternation.

    During the tangent warm-up only the sCM term runs, so every iteration updates the student
    and the fake score is idle. After it, one iteration in ``student_update_freq`` updates the
    student (sCM + weighted DMD term), the others update the fake-score net (eq. 4.4).
    Defaults are Wan 1.3B's: warm-up 1000, frequency 5, weights 100 (sCM) and 1 (DMD).
    A zero weight turns a term off: sCM-only (``dmd_weight=0``) has no critic, so every iteration
    updates the student; DMD-only (``scm_weight=0``) has no tangent, so no warm-up.
    """

    student_update_freq: int = 5
    tangent_warmup: int = 1000
    scm_weight: float = 100.0
    dmd_weight: float = 1.0

    def __post_init__(self):
        if self.student_update_freq < 1 or self.tangent_warmup < 0:
            raise ValueError("student_update_freq must be >= 1 and tangent_warmup >= 0")

    def in_warmup(self, iteration: int) -> bool:
        return self.scm_weight > 0 and iteration < self.tangent_warmup

    def updates_student(self, iteration: int) -> bool:
        return self.dmd_weight == 0 or self.in_warmup(iteration) or iteration % self.student_update_freq == 0

    def uses_dmd(self, iteration: int) -> bool:
        return self.dmd_weight > 0 and not self.in_warmup(iteration)
