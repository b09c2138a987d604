"""The rCM recipe: loss weights, time distributions and the student / fake-score alternation."""

from dataclasses import dataclass
from typing import Optional, Tuple

from ..checks import check_number
from ..diffusion.few_step import DEFAULT_MID_TIMES, MAX_STEPS, few_step_times
from ..diffusion.time import HALF_PI


@dataclass(frozen=True)
class RCMConfig:
    """Settings of the rCM objective (docs/math.md sections 3 and 4); defaults are Wan 1.3B's.

    A zero weight turns a term off: sCM only (``dmd_weight=0``) has no fake score, so every
    iteration updates the student; DMD only (``scm_weight=0``) has no tangent, so no warm-up.
    """

    scm_weight: float = 100.0
    """Weight of the sCM term (eq. 3.4); 0 turns it off."""

    dmd_weight: float = 1.0
    """Weight of the DMD term (eq. 4.3); 0 turns it and the fake-score updates off."""

    p_mean: float = 0.7
    """Mean of log sigma under p_G, the sCM time distribution (eq. 3.5); 1.5 for Wan 14B."""

    p_std: float = 1.6
    """Standard deviation of log sigma under p_G (eq. 3.5)."""

    dmd_shift: float = 5.0
    """RF time shift of p_D, the DMD noise-level distribution (eq. 4.5)."""

    dmd_reference_numel: int = 0
    """0: L_DMD is the reference's sum over the N latent elements of a sample (eq. 4.3), so the
    DMD/sCM gradient ratio grows as sqrt(N) (docs/math.md section 4, "Balance"). > 0: L_DMD is
    scaled by sqrt(dmd_reference_numel / N), so dmd_weight sets at every latent size the balance
    it sets at this one (2096640: Wan 1.3B at 480p x 81 frames, where the weights were tuned)."""

    dcm_step: float = 0.0
    """0: the sCM tangent dF^- is the student's JVP along the teacher ODE (eq. 3.1). > 0:
    discrete-time consistency: dF^- is the student's finite difference over one exact teacher
    DDIM step of this TrigFlow size (eq. 3.6; at most half of each sample's t), no JVP."""

    tangent_warmup: int = 1000
    """Iterations over which the tangent warm-up ratio r rises from 0 to 1 (eq. 3.2); during them
    only the sCM term runs. 0: no warm-up (Wan 14B)."""

    student_update_freq: int = 5
    """After the warm-up, one iteration in this many updates the student, the others the fake
    score (10 for Wan 14B)."""

    mid_times: Tuple[float, ...] = DEFAULT_MID_TIMES
    """TrigFlow times of the student rollout after pi/2 (eq. 4.1), falling."""

    max_rollout_steps: int = MAX_STEPS
    """The student rollout takes 1, 2, ..., max_rollout_steps steps in turn (eq. 4.1)."""

    guidance_scale: float = 5.0
    """Classifier-free guidance scale of the teacher (eq. 2.2); 1 means no guidance."""

    dmd_guidance_scale: Optional[float] = None
    """Guidance scale of the teacher's denoising inside the DMD direction only (eq. 4.2); None: the
    sCM teacher's ``guidance_scale``. A stronger real score sharpens the prompt without changing
    the consistency target."""

    def __post_init__(self):
        object.__setattr__(self, "mid_times", tuple(float(t) for t in self.mid_times))
        if self.student_update_freq < 1 or self.tangent_warmup < 0:
            raise ValueError("student_update_freq must be >= 1 and tangent_warmup >= 0")
        for name in ("dmd_reference_numel", "dcm_step"):
            check_number(name, getattr(self, name), at_least=0, note=" (0: off)")
        if self.dmd_guidance_scale is not None:
            check_number("dmd_guidance_scale", self.dmd_guidance_scale, at_least=1, note=" (1: no guidance)")
        check_number("guidance_scale", self.guidance_scale)
        check_number("p_mean", self.p_mean)
        check_number("p_std", self.p_std, above=0)
        check_number("dmd_shift", self.dmd_shift, above=0)
        for name in ("scm_weight", "dmd_weight"):
            check_number(name, getattr(self, name), at_least=0, note=" (0: that term off)")
        if self.scm_weight + self.dmd_weight == 0:
            raise ValueError("loss weights must not both be 0")
        if not 1 <= self.max_rollout_steps <= MAX_STEPS:
            raise ValueError(f"max_rollout_steps must lie in 1..{MAX_STEPS}, got {self.max_rollout_steps}")
        if len(self.mid_times) < self.max_rollout_steps - 1:
            raise ValueError(f"mid_times needs {self.max_rollout_steps - 1} times (the rollout takes up to "
                             f"{self.max_rollout_steps} steps), got {len(self.mid_times)}")
        try:  # the rollout starts at pi/2; rising or out-of-range times would train silently
            few_step_times(self.max_rollout_steps, HALF_PI, self.mid_times)
        except ValueError:
            raise ValueError(f"mid_times must fall strictly from below pi/2 to above 0, got {self.mid_times}") from None

    @property
    def dmd_guidance(self) -> float:
        """The guidance scale of the DMD direction's teacher."""
        return self.guidance_scale if self.dmd_guidance_scale is None else self.dmd_guidance_scale

    def in_warmup(self, iteration: int) -> bool:
        return self.scm_weight > 0 and iteration < self.tangent_warmup

    def updates_student(self, iteration: int) -> bool:
        """True: this iteration updates the student; False: the fake score."""
        return self.dmd_weight == 0 or self.in_warmup(iteration) or iteration % self.student_update_freq == 0

    def uses_dmd(self, iteration: int) -> bool:
        return self.dmd_weight > 0 and not self.in_warmup(iteration)
