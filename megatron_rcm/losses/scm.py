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


def discrete_tangent(student, x_t, t, text, F_teacher, step: float):
    """(F^-, dF^-) with dF^- a finite difference over one teacher step instead of a JVP (eq. 3.6).

    x' = cos h x_t - sin h F_T is the exact TrigFlow (DDIM) step of the teacher to t - h, with
    h = min(step, t / 2) per sample, and dF^- = cos t sin t (cos h F^-(x_t, t) - F^-(x', t - h)) / sin h,
    in float64. It equals the JVP of eq. 3.1 where F^- moves like a flow with a fixed x0 and noise
    along the step, and differs from it by O(h) elsewhere. Two student passes, no forward-mode AD.
    """
    if step <= 0:
        raise ValueError(f"the discrete consistency step must be > 0, got {step}")
    h = torch.minimum(torch.full_like(t, step), t / 2)
    cos_h, sin_h = expand_like(torch.cos(h), x_t), expand_like(torch.sin(h), x_t)
    x_prev = cos_h * x_t - sin_h * F_teacher.to(x_t.dtype)
    F_now = student.predict(x_t, t, text).F
    F_prev = student.predict(x_prev, t - h, text).F
    scale = expand_like(torch.cos(t.double()) * torch.sin(t.double()), x_t)
    cos_h, sin_h = cos_h.double(), sin_h.double()
    return F_now, scale * (cos_h * F_now.double() - F_prev.double()) / sin_h


def normalize_per_sample(g: torch.Tensor, offset: float = 0.1) -> torch.Tensor:
    """g / (||g||_2 + offset), the norm over all but the batch dimension (eq. 3.3)."""
    norm = g.flatten(1).norm(dim=1)
    return g / expand_like(norm + offset, g)


def _finite_per_sample(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x).flatten(1).all(dim=1)


def scm_loss(student, teacher, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
             text: torch.Tensor, ratio: float = 1.0, dcm_step: float = 0.0):
    """L_sCM (eq. 3.4), the sum over C,T,H,W of (F_theta - sg(F_theta) - g)^2, mean over the batch.

    student, teacher: TrigFlowDenoisers (the teacher around ClassifierFreeGuidance); t ~ p_G [B].
    ``dcm_step`` > 0 takes the tangent from ``discrete_tangent`` (discrete-time consistency).
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
        if dcm_step > 0:
            F_minus, F_tangent = discrete_tangent(student, x_t, t, text, F_teacher, dcm_step)
        else:
            scale = torch.cos(t) * torch.sin(t)
            jvp = student.predict_jvp(x_t, t, text, expand_like(scale, x_t) * F_teacher, scale)
            F_minus, F_tangent = jvp.F, jvp.F_tangent
        g = scm_tangent(x_t.double(), t.double(), F_minus.double(), F_tangent.double(),
                        F_teacher.double(), ratio)
        g_finite = _finite_per_sample(g)
        F_finite = _finite_per_sample(F_minus)
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
        "scm/F_tangent_norm": kept_mean_norm(F_tangent),
        "scm/warmup_ratio": ratio,
    }
    if not keep.any():
        return torch.zeros((), dtype=torch.float64), diagnostics
    F_student = student.predict(x_t[keep], t[keep], text[keep]).F
    per_sample = (F_student.double() - F_student.detach().double() - g).pow(2).flatten(1).sum(dim=1)
    loss = per_sample.sum() / x0.shape[0]

    return loss, diagnostics
