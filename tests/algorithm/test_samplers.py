"""Samplers with known answers: the few-step consistency sampler (eq. 6.1), RF Euler and UniPC."""

import math

import pytest
import torch

from megatron_rcm.diffusion.few_step import few_step_times, sample_few_step
from megatron_rcm.diffusion.mlp_velocity import MLPVelocity
from megatron_rcm.diffusion.teacher_sampling import rf_sampling_times, sample_rf_euler, sample_rf_unipc
from megatron_rcm.diffusion.guidance import ClassifierFreeGuidance

from .conftest import GaussianProblem

N = 20000  # samples per statistical test


def _problem(seed):
    """One conditioning repeated N times, so every sample has the same target distribution."""
    problem = GaussianProblem(seed=seed, shape=(N, 1, 1, 1, 3))
    problem.text = problem.text[:1].expand(N, -1, -1)
    problem.guided_mean = problem.guided_mean[:1]
    return problem


def _assert_gaussian(samples, mean, std, z=5.0):
    """Per-dimension mean and std within z standard errors (plus an absolute slack for bias)."""
    x = samples.flatten(1)
    mean, std = mean.flatten().expand(x.shape[1]), std.flatten().expand(x.shape[1])
    assert ((x.mean(0) - mean).abs() <= z * std / math.sqrt(len(x))).all(), (x.mean(0), mean)
    assert ((x.std(0) - std).abs() <= z * std / math.sqrt(2 * len(x))).all(), (x.std(0), std)


def test_few_step_times_eq_6_1():
    assert few_step_times(4, 1.55) == [1.55, 1.5, 1.4, 1.0, 0.0]
    assert few_step_times(1, math.atan(80)) == [math.atan(80), 0.0]
    for bad in (0, 5):
        with pytest.raises(ValueError):
            few_step_times(bad, 1.55)
    with pytest.raises(ValueError):
        few_step_times(2, 1.45)  # t_max below the first mid time


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_exact_consistency_function_samples_the_guided_distribution(steps):
    problem = _problem(seed=10 + steps)
    g = torch.Generator().manual_seed(steps)
    noise = torch.randn(problem.shape, generator=g, dtype=torch.float64)
    # sigma_max -> infinity makes x = eps exact at t_0; eq. 6.1 is then exact at any step count.
    samples = sample_few_step(problem.student, noise, problem.text, steps, sigma_max=1e8, generator=g)
    _assert_gaussian(samples, problem.guided_mean, problem.std)


def test_one_step_at_sigma_max_80_has_the_analytic_small_bias():
    """Starting x = eps at t_0 = arctan 80 (not the true x_t0) shifts the mean by
    -std cos t_0 mu / std_t0 and scales the std by 1 / std_t0 -- visible with enough samples."""
    problem = _problem(seed=20)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(problem.shape, generator=g, dtype=torch.float64)
    samples = sample_few_step(problem.student, noise, problem.text, 1, sigma_max=80.0)
    t0 = math.atan(80.0)
    mu, std = problem.guided_mean, problem.std
    std_t0 = torch.sqrt(math.cos(t0) ** 2 * std**2 + math.sin(t0) ** 2)
    _assert_gaussian(samples, mu - std * math.cos(t0) * mu / std_t0, std / std_t0)


def test_unguided_consistency_function_is_detected_as_wrong():
    problem = _problem(seed=21)
    problem.student_net.cfg_scale = 1.0
    noise = torch.randn(problem.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    samples = sample_few_step(problem.student, noise, problem.text, 2, sigma_max=1e8,
                              generator=torch.Generator().manual_seed(2))
    with pytest.raises(AssertionError):
        _assert_gaussian(samples, problem.guided_mean, problem.std)


def test_one_euler_step_returns_the_mean():
    """At s = 1, E[x0 | x_1] = mu whatever x_1, so one Euler step maps all noise to mu."""
    problem = _problem(seed=22)
    guided = ClassifierFreeGuidance(problem.teacher_net, problem.negative, problem.cfg_scale)
    noise = torch.randn(problem.shape, dtype=torch.float64)
    samples = sample_rf_euler(guided, noise[:50], problem.text[:50], 1)
    assert torch.allclose(samples, problem.guided_mean.expand_as(samples), atol=1e-12)


@pytest.mark.parametrize("sampler,steps,shift", [(sample_rf_euler, 100, 1.0), (sample_rf_euler, 300, 5.0),
                                                 (sample_rf_unipc, 25, 3.0)])
def test_teacher_samplers_match_the_guided_distribution(sampler, steps, shift):
    problem = _problem(seed=23)
    guided = ClassifierFreeGuidance(problem.teacher_net, problem.negative, problem.cfg_scale)
    noise = torch.randn(problem.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        samples = sampler(guided, noise, problem.text, steps, shift=shift)
    _assert_gaussian(samples, problem.guided_mean, problem.std)


def test_few_euler_steps_are_detectably_wrong():
    problem = _problem(seed=23)
    guided = ClassifierFreeGuidance(problem.teacher_net, problem.negative, problem.cfg_scale)
    noise = torch.randn(problem.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.raises(AssertionError):
        _assert_gaussian(sample_rf_euler(guided, noise, problem.text, 4), problem.guided_mean, problem.std)


def test_rf_sampling_times_eq_1_2():
    assert rf_sampling_times(2, 5.0) == pytest.approx([1.0, 2.5 / 3.0, 0.0])
    with pytest.raises(ValueError):
        rf_sampling_times(0)


@pytest.mark.parametrize("steps", [1, 2, 3, 7])
def test_unipc_equals_diffusers_scheduler(steps):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(5)
    net = MLPVelocity(6, 4, hidden=32).double()
    g = torch.Generator().manual_seed(6)
    noise = torch.randn(3, 6, generator=g, dtype=torch.float64)
    text = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    shift = 3.0
    ours = sample_rf_unipc(net, noise, text, steps, shift=shift)

    scheduler = diffusers.UniPCMultistepScheduler(
        solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0,
        solver_type="bh2", lower_order_final=True)
    scheduler.set_timesteps(steps)
    sigmas = rf_sampling_times(steps, shift)
    sigmas[0] = 1 - 1e-6
    scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float64)  # float64, our times
    x = noise
    with torch.no_grad():
        for i, s in enumerate(sigmas[:-1]):
            velocity = net(x, torch.full((3,), 1000 * s, dtype=torch.float64), text)
            x = scheduler.step(velocity, scheduler.timesteps[i], x).prev_sample
    assert torch.allclose(ours, x, atol=1e-12, rtol=1e-12)
