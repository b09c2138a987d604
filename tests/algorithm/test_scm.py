"""The sCM term (section 3) on Gaussian data, where the exact consistency function is known."""

import math

import pytest
import torch

from megatron_rcm.diffusion.time import expand_like
from megatron_rcm.losses.scm import normalize_per_sample, scm_loss, scm_tangent, tangent_warmup_ratio

from .conftest import GaussianProblem


def _tangent(problem, t, x_t, ratio=1.0):
    with torch.no_grad():
        F_teacher = problem.teacher.predict(x_t, t, problem.text).F
        scale = torch.cos(t) * torch.sin(t)
        jvp = problem.student.predict_jvp(x_t, t, problem.text, expand_like(scale, x_t) * F_teacher, scale)
    return scm_tangent(x_t, t, jvp.F, jvp.F_tangent, F_teacher, ratio), F_teacher


def test_exact_consistency_function_has_zero_tangent_eq_3_2(gaussian):
    t, x_t = gaussian.rand_times(), 2 * gaussian.randn(*gaussian.shape)
    g, F_teacher = _tangent(gaussian, t, x_t)
    assert F_teacher.abs().max() > 0.1
    assert g.abs().max() < 1e-12


def test_tangent_is_nonzero_for_a_wrong_student(gaussian):
    with torch.no_grad():
        gaussian.student_net.mean_shift.add_(0.2)
    g, _ = _tangent(gaussian, gaussian.rand_times(), gaussian.randn(*gaussian.shape))
    assert g.flatten(1).norm(dim=1).min() > 1e-3


def test_tangent_is_nonzero_without_guidance_in_the_student():
    problem = GaussianProblem(seed=1)
    problem.student_net.cfg_scale = 1.0  # the consistency function of the unguided teacher
    g, _ = _tangent(problem, problem.rand_times(), problem.randn(*problem.shape))
    assert g.flatten(1).norm(dim=1).min() > 1e-3


def test_warmup_form_eq_3_2():
    g = torch.Generator().manual_seed(5)
    x_t, F_s, dF_s, F_T = torch.randn(4, 3, 7, generator=g, dtype=torch.float64)
    t = torch.rand(3, generator=g, dtype=torch.float64) * 1.5 + 0.05
    cos, sin = torch.cos(t)[:, None], torch.sin(t)[:, None]
    standard = -cos**2 * (F_s - F_T) - (cos * sin * x_t + dF_s)
    assert torch.allclose(scm_tangent(x_t, t, F_s, dF_s, F_T, 1.0), standard, atol=1e-14)
    assert torch.allclose(scm_tangent(x_t, t, F_s, dF_s, F_T, 0.0), -cos * (F_s - F_T) - dF_s, atol=1e-14)
    r = 0.4
    expected = -cos * torch.sqrt(1 - r**2 * sin**2) * (F_s - F_T) - (r * cos * sin * x_t + dF_s)
    assert torch.allclose(scm_tangent(x_t, t, F_s, dF_s, F_T, r), expected, atol=1e-14)
    with pytest.raises(ValueError):
        scm_tangent(x_t, t, F_s, dF_s, F_T, 1.5)


def test_warmup_ratio():
    assert [tangent_warmup_ratio(k, 4) for k in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert tangent_warmup_ratio(0, 0) == 1.0
    with pytest.raises(ValueError):
        tangent_warmup_ratio(-1, 4)


def test_normalisation_eq_3_3():
    g = 7 * torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    norm = g.flatten(1).norm(dim=1)
    normalised = normalize_per_sample(g)
    assert torch.allclose(normalised * (norm + 0.1)[:, None, None], g, atol=1e-12)


def _scm(problem, x0, eps, t, ratio=1.0):
    for p in problem.student_net.parameters():
        p.grad = None
    loss, diagnostics = scm_loss(problem.student, problem.teacher, x0, eps, t, problem.text, ratio)
    loss.backward()
    return loss, diagnostics, {n: p.grad.clone() for n, p in problem.student_net.named_parameters()}


def test_loss_gradient_vanishes_at_the_exact_student_eq_3_4(gaussian):
    t = gaussian.rand_times()
    loss, diagnostics, grads = _scm(gaussian, gaussian.data(), gaussian.randn(*gaussian.shape), t)
    assert loss.item() < 1e-20
    assert all(grad.abs().max() < 1e-10 for grad in grads.values())
    assert diagnostics["scm/tangent_norm"] < 1e-10
    assert diagnostics["scm/mean_t"].item() == pytest.approx(t.mean().item())
    assert diagnostics["scm/nonfinite_tangent"] == diagnostics["scm/nonfinite_F"] == 0


def test_loss_gradient_points_a_wrong_student_towards_the_truth():
    problem = GaussianProblem(seed=7, shape=(256, 2, 1, 2, 2))
    error = 0.3 * problem.randn(*problem.shape[1:])
    with torch.no_grad():
        problem.student_net.mean_shift.copy_(error)
    t = torch.atan(torch.exp(0.7 + 1.6 * problem.randn(problem.shape[0])))  # p_G
    loss, diagnostics, grads = _scm(problem, problem.data(), problem.randn(*problem.shape), t)
    assert loss.item() > 1e-3 and diagnostics["scm/tangent_norm"] > 1e-3
    grad = grads["mean_shift"]
    assert (grad * error).sum() / (grad.norm() * error.norm()) > 0.9  # descent shrinks the error


def test_non_finite_samples_are_masked_and_counted(gaussian):
    with torch.no_grad():
        gaussian.student_net.mean_shift.add_(0.1 * gaussian.randn(*gaussian.shape[1:]))
    x0, eps, t = gaussian.data(), gaussian.randn(*gaussian.shape), gaussian.rand_times()
    clean_loss, _, _ = _scm(gaussian, x0, eps, t)
    broken = x0.clone()
    broken[2, 0, 0, 1, 1] = math.nan
    loss, diagnostics, grads = _scm(gaussian, broken, eps, t)
    assert all(torch.isfinite(grad).all() for grad in grads.values())
    assert diagnostics["scm/nonfinite_tangent"] == 1 and diagnostics["scm/nonfinite_F"] == 1
    keep = [i for i in range(gaussian.shape[0]) if i != 2]
    gaussian.text = gaussian.text[keep]
    kept_loss, _, _ = _scm(gaussian, x0[keep], eps[keep], t[keep])
    # The broken sample counts as zero in a mean over all six; the other five are unchanged.
    assert loss.item() * 6 == pytest.approx(kept_loss.item() * 5, rel=1e-10)
    assert clean_loss.item() * 6 > loss.item() * 6 > 0
