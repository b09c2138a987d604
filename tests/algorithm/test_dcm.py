"""The discrete-time consistency switch (RCMConfig.dcm_step, eq. 3.6) against analytic flows."""

import pytest
import torch

from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.diffusion.time import expand_like
from megatron_rcm.losses.config import RCMConfig
from megatron_rcm.losses.scm import discrete_tangent, scm_loss, scm_tangent

from .conftest import GaussianProblem
from .gaussian import GaussianVelocity


def _tangents(problem, t, x_t, step):
    """(the JVP tangent of eq. 3.1, the finite difference of eq. 3.6) of problem.student at x_t."""
    with torch.no_grad():
        F_teacher = problem.teacher.predict(x_t, t, problem.text).F
        scale = torch.cos(t) * torch.sin(t)
        jvp = problem.student.predict_jvp(x_t, t, problem.text, expand_like(scale, x_t) * F_teacher, scale)
        F_now, discrete = discrete_tangent(problem.student, x_t, t, problem.text, F_teacher, step)
    assert torch.equal(F_now, jvp.F)
    return jvp.F_tangent, discrete, F_teacher


def _flow_student(problem):
    """The exact guided flow itself (not its consistency function) as the student."""
    problem.student = TrigFlowDenoiser(GaussianVelocity(problem.std, problem.negative, problem.cfg_scale))


def test_finite_difference_is_exact_on_the_flow_of_a_single_point():
    # std ~ 0: every teacher trajectory is x_t = cos t x0 + sin t eps with one x0, along which the exact
    # flow is F = -sin t x0 + cos t eps: the finite difference over any step h is its exact derivative.
    problem = GaussianProblem(seed=3)
    problem.std = torch.full_like(problem.std, 1e-9)
    problem.teacher.net.net.log_std.data.copy_(problem.std.log())
    _flow_student(problem)
    t, x_t = problem.rand_times(0.2, 1.5), 2 * problem.randn(*problem.shape)
    for step in (0.05, 0.3):
        jvp, discrete, _ = _tangents(problem, t, x_t, step)
        assert jvp.abs().max() > 0.1
        assert torch.allclose(discrete, jvp, atol=1e-7, rtol=0)


def test_finite_difference_converges_to_the_jvp_at_first_order_on_gaussian_data():
    problem = GaussianProblem(seed=4)
    _flow_student(problem)
    t, x_t = problem.rand_times(0.2, 1.5), 2 * problem.randn(*problem.shape)
    errors = []
    for step in (0.04, 0.02, 0.01):
        jvp, discrete, _ = _tangents(problem, t, x_t, step)
        errors.append((discrete - jvp).norm() / jvp.norm())
    assert errors[0] > 1e-4  # std > 0: the step is not exact
    assert errors[0] / errors[1] == pytest.approx(2, rel=0.1)
    assert errors[1] / errors[2] == pytest.approx(2, rel=0.1)


def test_step_is_capped_at_half_of_each_time():
    problem = GaussianProblem(seed=5)
    _flow_student(problem)
    t, x_t = problem.rand_times(0.05, 0.1), problem.randn(*problem.shape)
    _, capped, _ = _tangents(problem, t, x_t, 1.0)
    with torch.no_grad():
        F_teacher = problem.teacher.predict(x_t, t, problem.text).F
        h = expand_like(t / 2, x_t)
        F_prev = problem.student.predict(torch.cos(h) * x_t - torch.sin(h) * F_teacher, t / 2, problem.text).F
        F_now = problem.student.predict(x_t, t, problem.text).F
    expected = expand_like(torch.cos(t) * torch.sin(t), x_t) * (torch.cos(h) * F_now - F_prev) / torch.sin(h)
    assert torch.allclose(capped, expected, atol=1e-10)
    with pytest.raises(ValueError):
        discrete_tangent(problem.student, x_t, t, problem.text, F_teacher, 0.0)


def _scm_grad(problem, x0, eps, t, dcm_step):
    for p in problem.student_net.parameters():
        p.grad = None
    loss, diagnostics = scm_loss(problem.student, problem.teacher, x0, eps, t, problem.text, 1.0, dcm_step)
    loss.backward()
    return loss, diagnostics, problem.student_net.mean_shift.grad.clone()


def test_dcm_loss_uses_the_finite_difference_and_points_a_wrong_student_towards_the_truth():
    problem = GaussianProblem(seed=7, shape=(256, 2, 1, 2, 2))
    error = 0.3 * problem.randn(*problem.shape[1:])
    with torch.no_grad():
        problem.student_net.mean_shift.copy_(error)
    t = torch.atan(torch.exp(0.7 + 1.6 * problem.randn(problem.shape[0])))
    x0, eps = problem.data(), problem.randn(*problem.shape)
    loss, diagnostics, grad = _scm_grad(problem, x0, eps, t, 0.05)
    # the loss is eq. 3.4 with g built from the finite difference
    x_t = expand_like(torch.cos(t), x0) * x0 + expand_like(torch.sin(t), x0) * eps
    with torch.no_grad():
        F_teacher = problem.teacher.predict(x_t, t, problem.text).F
        F_now, tangent = discrete_tangent(problem.student, x_t, t, problem.text, F_teacher, 0.05)
        g = scm_tangent(x_t, t, F_now, tangent, F_teacher, 1.0)
    norms = g.flatten(1).norm(dim=1)
    assert diagnostics["scm/tangent_norm"].item() == pytest.approx(norms.mean().item(), rel=1e-12)
    # its value: sum over the sample of (g / (||g|| + 0.1))^2, mean over the batch
    assert loss.item() == pytest.approx(((norms / (norms + 0.1)) ** 2).mean().item(), rel=1e-12)
    assert (grad * error).sum() / (grad.norm() * error.norm()) > 0.9
    # and it is not the JVP's: the two tangents differ by O(h)
    _, jvp_diagnostics, jvp_grad = _scm_grad(problem, x0, eps, t, 0.0)
    assert jvp_diagnostics["scm/tangent_norm"] != diagnostics["scm/tangent_norm"]
    assert (grad * jvp_grad).sum() / (grad.norm() * jvp_grad.norm()) > 0.99 and not torch.equal(grad, jvp_grad)


def test_config_validates_the_step():
    assert RCMConfig().dcm_step == 0.0
    with pytest.raises(ValueError, match="dcm_step"):
        RCMConfig(dcm_step=-0.1)
