"""The DMD regulariser, its rollout and the fake-score loss (section 4) on Gaussian data."""

import math

import pytest
import torch

from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.diffusion.time import expand_like, trigflow_to_rf
from megatron_rcm.losses.dmd import (
    dmd_direction, dmd_loss, fake_score_loss, rollout_steps, student_rollout)

from .conftest import GaussianProblem
from .gaussian import GaussianVelocity


def _fake(problem, mean_shift=None):
    """The exact denoiser of the guided Gaussian, i.e. of a perfect student's distribution."""
    net = GaussianVelocity(problem.std, problem.negative, problem.cfg_scale)
    if mean_shift is not None:
        with torch.no_grad():
            net.mean_shift.copy_(mean_shift)
    return TrigFlowDenoiser(net)


def _noising(problem):
    return problem.rand_times(0.05, 1.5), problem.randn(*problem.shape)


def test_direction_is_zero_when_the_fake_score_equals_the_guided_teacher_eq_4_2(gaussian):
    G = gaussian.data()
    t_D, eps_D = _noising(gaussian)
    d = dmd_direction(G, t_D, eps_D, gaussian.text, gaussian.teacher, _fake(gaussian))
    assert d.dtype == torch.float64 and d.abs().max() < 1e-12


def test_direction_is_the_analytic_posterior_mean_gap_eq_4_2(gaussian):
    G = gaussian.data()
    t_D, eps_D = _noising(gaussian)
    offset = 0.5 * gaussian.randn(*gaussian.shape[1:])
    d = dmd_direction(G, t_D, eps_D, gaussian.text, gaussian.teacher, _fake(gaussian, offset))
    # E[x0 | x_s] = mu + k (x_s - (1 - s) mu), k = (1 - s) std^2 / var: the gap is (1 - k (1 - s)) offset.
    s = expand_like(trigflow_to_rf(t_D), G)
    k = (1 - s) * gaussian.std**2 / ((1 - s) ** 2 * gaussian.std**2 + s**2)
    x_D = expand_like(torch.cos(t_D), G) * G + expand_like(torch.sin(t_D), G) * eps_D
    x0_teacher = gaussian.teacher.x0(x_D, t_D, gaussian.text)
    scale = (G - x0_teacher).abs().flatten(1).mean(dim=1).clamp_min(1e-5)
    expected = (1 - k * (1 - s)) * offset / expand_like(scale, G)
    assert torch.allclose(d, expected, atol=1e-10)
    assert d.abs().max() > 0.05


def test_dmd_loss_gradient_is_twice_the_direction_eq_4_3(gaussian):
    G = gaussian.data().requires_grad_(True)
    t_D, eps_D = _noising(gaussian)
    fake = _fake(gaussian, 0.3 * gaussian.randn(*gaussian.shape[1:]))
    loss, diagnostics = dmd_loss(G, t_D, eps_D, gaussian.text, gaussian.teacher, fake)
    loss.backward()
    d = dmd_direction(G, t_D, eps_D, gaussian.text, gaussian.teacher, fake)
    assert torch.allclose(G.grad, 2 * d / gaussian.shape[0], atol=1e-12)
    assert loss.item() == pytest.approx(d.pow(2).flatten(1).sum(1).mean().item(), rel=1e-12)
    assert diagnostics["dmd/direction_norm"].item() == pytest.approx(d.flatten(1).norm(dim=1).mean().item())
    assert diagnostics["dmd/nonfinite_direction"].item() == 0


def test_rollout_gradient_flows_through_the_last_step_only_eq_4_1(gaussian):
    noises = [gaussian.randn(*gaussian.shape) for _ in range(3)]
    G = student_rollout(gaussian.student, noises, gaussian.text)
    grad_rollout = torch.autograd.grad(G.sum(), gaussian.student_net.mean_shift)[0]
    # The chain by hand (times pi/2, 1.5, 1.4), once without grad before the last step, once with.
    def chain(grad_before_last):
        x = noises[0]
        for t_i, t_next, eps in [(math.pi / 2, 1.5, noises[1]), (1.5, 1.4, noises[2])]:
            with torch.set_grad_enabled(grad_before_last):
                x0 = gaussian.student.x0(x, torch.full((gaussian.shape[0],), t_i, dtype=torch.float64),
                                         gaussian.text)
                x = math.cos(t_next) * x0 + math.sin(t_next) * eps
        last = gaussian.student.x0(x, torch.full((gaussian.shape[0],), 1.4, dtype=torch.float64), gaussian.text)
        return last, torch.autograd.grad(last.sum(), gaussian.student_net.mean_shift)[0]

    last, grad_last_only = chain(False)
    _, grad_full = chain(True)
    assert torch.allclose(G, last, atol=1e-12)
    assert torch.allclose(grad_rollout, grad_last_only, atol=1e-12)
    assert (grad_full - grad_last_only).abs().max() > 1e-2


def test_rollout_steps_cycle_and_bounds(gaussian):
    assert [rollout_steps(k) for k in range(6)] == [1, 2, 3, 4, 1, 2]
    for bad in (0, 5):
        with pytest.raises(ValueError):
            student_rollout(gaussian.student, [gaussian.randn(*gaussian.shape)] * bad, gaussian.text)


def test_fake_score_loss_eq_4_4_and_its_minimiser_is_the_student_distribution():
    problem = GaussianProblem(seed=3, shape=(4096, 1, 1, 1, 2))
    problem.text = problem.text[:1].expand(problem.shape[0], -1, -1)
    problem.guided_mean = problem.guided_mean[:1].expand(problem.shape)
    G = problem.data()  # the "student" samples: the guided Gaussian
    t_D, eps_D = _noising(problem)
    fake_net = GaussianVelocity(problem.std, problem.negative, problem.cfg_scale)
    fake = TrigFlowDenoiser(fake_net)
    loss, _ = fake_score_loss(G, t_D, eps_D, problem.text, fake)
    x_D = expand_like(torch.cos(t_D), G) * G + expand_like(torch.sin(t_D), G) * eps_D
    expected = ((G - fake.x0(x_D, t_D, problem.text)) ** 2).flatten(1).sum(1) / torch.sin(t_D) ** 2
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-12)
    # Start the fake score's mean off by 1 and minimise: it returns to the student's mean.
    with torch.no_grad():
        fake_net.mean_shift.fill_(1.0)
    optimizer = torch.optim.Adam([fake_net.mean_shift], lr=0.05)
    for _ in range(150):
        t_D, eps_D = _noising(problem)
        loss, _ = fake_score_loss(G, t_D, eps_D, problem.text, fake)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert fake_net.mean_shift.abs().max() < 0.05


@pytest.mark.parametrize("dmd_scale", [5.0, 1.0])
def test_dmd_guidance_scale_sets_the_real_score_only_eq_4_2(dmd_scale):
    """A fake score exact for the Gaussian guided at ``dmd_scale`` is the fixed point of DMD when the
    DMD teacher guides at that scale, not at the sCM teacher's 3; the sCM term does not change."""
    from megatron_rcm.diffusion.guidance import ClassifierFreeGuidance
    from megatron_rcm.losses.config import RCMConfig
    from megatron_rcm.losses.rcm import Denoisers, IterationNoise, student_loss

    problem = GaussianProblem(seed=3)
    with torch.no_grad():  # a student off its consistency function, so the sCM term has a gradient
        problem.student_net.mean_shift.copy_(0.3 * problem.randn(*problem.shape[1:]))
    x0 = problem.data()
    fake = TrigFlowDenoiser(GaussianVelocity(problem.std, problem.negative, dmd_scale))
    dmd_teacher = TrigFlowDenoiser(ClassifierFreeGuidance(problem.teacher_net, problem.negative, dmd_scale))
    t_D, eps_D = _noising(problem)
    noise = IterationNoise(eps=problem.randn(*problem.shape), t_scm=problem.rand_times(), t_dmd=t_D,
                           eps_dmd=eps_D, rollout=[problem.randn(*problem.shape)])

    def gradient(denoisers, **weights):
        problem.student_net.zero_grad()
        rcm = RCMConfig(tangent_warmup=0, max_rollout_steps=1, **weights)
        loss, _ = student_loss(denoisers, rcm, x0, problem.text, noise, iteration=0, student_updates=0)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in problem.student_net.parameters()])

    split = Denoisers(problem.teacher, problem.student, fake, dmd_teacher)
    shared = Denoisers(problem.teacher, problem.student, fake)
    assert gradient(split, scm_weight=0.0).abs().max() < 1e-10
    assert gradient(shared, scm_weight=0.0).abs().max() > 1e-3
    scm = gradient(split, dmd_weight=0.0)
    assert scm.abs().max() > 1e-3 and torch.equal(scm, gradient(shared, dmd_weight=0.0))
