"""The sCM term: continuous-time consistency in TrigFlow form (docs/math.md section 3)."""

import torch

from megatron_rcm.diffusion.time import expand_like


def tangent_warmup_ratio(step: int, tangent_warmup: int) -> float:
    """r = min(1, step / tangent_warmup) (eq. 3.2); no warm-up (0) gives r = 1."""
    if tangent_warmup < 0 or step < 0:
        raise ValueError(f"step and tangent_warmup must be >= 0, got {step} and {tangent_warmup}")
    return 1.0 if tangent_warmup == 0 else min(1.0, step / tangent_warmup)


def scm_tangent(x_t, t, F_student, F_student_tangent, F_teacher, ratio: float):
    """g = -cos t sqrt(1 - r^2 sin^2 t) (F^- - F_T) - (r cos t sin t x_t + dF^-) (eq. 3.2).

    dF^- is the student's F tangent along (cos t sin t F_T, cos t sin t) (eq. 3.1). At r = 1 this
    is cos t times d f / dt along the teacher ODE, f = cos t x_t - sin t F the consistency function.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the tangent warm-up ratio must lie in [0, 1], got {ratio}")
    cos, sin = expand_like(torch.cos(t), x_t), expand_like(torch.sin(t), x_t)
    return (-cos * torch.sqrt(1 - ratio**2 * sin**2) * (F_student - F_teacher)
            - (ratio * cos * sin * x_t + F_student_tangent))


def normalize_per_sample(g: torch.Tensor, offset: float = 0.1) -> torch.Tensor:
    """g / (||g||_2 + offset), the norm over all but the batch dimension (eq. 3.3)."""
    norm = g.flatten(1).norm(dim=1)
    return g / expand_like(norm + offset, g)


def _finite_per_sample(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x).flatten(1).all(dim=1)


def scm_loss(student, teacher, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
             text: torch.Tensor, ratio: float = 1.0):
    """L_sCM (eq. 3.4), the sum over C,T,H,W of (F_theta - sg(F_theta) - g)^2, mean over the batch.

    student, teacher: TrigFlowDenoisers (the teacher around ClassifierFreeGuidance); t ~ p_G [B].
    The teacher pass and the student JVP run without grad (theta^- = sg(theta)); g is built and
    normalised in float64. Its gradient is -2 g dF_theta/dtheta, i.e. descent pushes F_theta along g.
    A sample whose g or F_theta is non-finite contributes zero and is counted in the diagnostics.
    F_theta equals the F^- of the no-grad JVP pass, so such samples are known before the grad pass
    and left out of it: masking after a non-finite forward would still put NaN into the gradients.
    If no sample is finite the loss has no graph: the trainer should skip that step.
    Returns (loss, diagnostics): detached 0-dim tensors, so the trainer can reduce them across ranks.
    """
    cos, sin = expand_like(torch.cos(t), x0), expand_like(torch.sin(t), x0)
    x_t = cos * x0 + sin * eps
    with torch.no_grad():
        F_teacher = teacher.predict(x_t, t, text).F
        scale = torch.cos(t) * torch.sin(t)
        jvp = student.predict_jvp(x_t, t, text, expand_like(scale, x_t) * F_teacher, scale)
        g = scm_tangent(x_t.double(), t.double(), jvp.F.double(), jvp.F_tangent.double(),
                        F_teacher.double(), ratio)
        g_finite = _finite_per_sample(g)
        F_finite = _finite_per_sample(jvp.F)
        keep = g_finite & F_finite
        tangent_norm = g.flatten(1).norm(dim=1)
        g = normalize_per_sample(g[keep])

    def kept_mean_norm(x):
        return x[keep].double().flatten(1).norm(dim=1).mean()

    diagnostics = {
        "scm/tangent_norm": tangent_norm[keep].mean(),
        "scm/nonfinite_tangent": (~g_finite).sum(),
        "scm/nonfinite_F": (~F_finite).sum(),
        "scm/mean_t": t.double().mean(),
        "scm/teacher_F_norm": kept_mean_norm(F_teacher),
        "scm/F_tangent_norm": kept_mean_norm(jvp.F_tangent),
        "scm/warmup_ratio": ratio,
    }
    if not keep.any():
        return torch.zeros((), dtype=torch.float64), diagnostics
    F_student = student.predict(x_t[keep], t[keep], text[keep]).F
    per_sample = (F_student.double() - F_student.detach().double() - g).pow(2).flatten(1).sum(dim=1)
    loss = per_sample.sum() / x0.shape[0]

    return loss, diagnostics
