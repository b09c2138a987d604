"""Time samplers p_G and p_D, the update schedule and the power EMA (sections 3-5)."""

import math

import pytest
import torch

from megatron_rcm.diffusion.time import trigflow_to_rf
from megatron_rcm.diffusion.time_sampling import sample_time_dmd, sample_time_scm
from megatron_rcm.losses.config import RCMConfig
from megatron_rcm.training.ema import PowerEMA, power_ema_gamma

N = 100000


def test_p_G_is_log_normal_in_sigma():
    t = sample_time_scm(N, 0.7, 1.6, generator=torch.Generator().manual_seed(0))
    assert ((t > 0) & (t < math.pi / 2)).all()
    log_sigma = torch.log(torch.tan(t))
    assert log_sigma.mean().item() == pytest.approx(0.7, abs=5 * 1.6 / math.sqrt(N))
    assert log_sigma.std().item() == pytest.approx(1.6, abs=5 * 1.6 / math.sqrt(2 * N))


def test_p_D_is_shifted_uniform_in_rf_time():
    shift = 5.0
    t = sample_time_dmd(N, shift, generator=torch.Generator().manual_seed(1))
    s = trigflow_to_rf(t)
    u = s / (shift - (shift - 1) * s)  # the inverse of eq. 1.2
    # Kolmogorov-Smirnov distance to U[0, 1); the 0.1% critical value is 1.95 / sqrt(N).
    u_sorted = u.sort().values
    grid = torch.arange(1, N + 1, dtype=torch.float64) / N
    assert (u_sorted - grid).abs().max().item() < 1.95 / math.sqrt(N)
    assert ((t > 0) & (t <= math.pi / 2)).all()


def test_schedule_alternates_after_warmup():
    schedule = RCMConfig(student_update_freq=5, tangent_warmup=3)
    assert [schedule.updates_student(k) for k in range(12)] == [
        True, True, True, False, False, True, False, False, False, False, True, False]
    assert [schedule.uses_dmd(k) for k in (0, 2, 3, 10)] == [False, False, True, True]
    assert not RCMConfig(dmd_weight=0.0, tangent_warmup=0).uses_dmd(10)


def test_schedule_without_a_term():
    scm_only = RCMConfig(student_update_freq=5, tangent_warmup=3, dmd_weight=0.0)
    assert all(scm_only.updates_student(k) for k in range(12))
    assert not any(scm_only.uses_dmd(k) for k in range(12))
    dmd_only = RCMConfig(student_update_freq=2, tangent_warmup=3, scm_weight=0.0)
    assert [dmd_only.updates_student(k) for k in range(6)] == [True, False, True, False, True, False]
    assert all(dmd_only.uses_dmd(k) for k in range(6))
    with pytest.raises(ValueError):
        RCMConfig(student_update_freq=0)


def test_power_ema_gamma_for_std_0_1():
    gamma = power_ema_gamma(0.1)
    assert gamma == pytest.approx(6.94, abs=0.005)
    s2 = 0.1**-2
    assert gamma**3 + 7 * gamma**2 + (16 - s2) * gamma + 12 - s2 == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError):
        power_ema_gamma(0.5)


def test_power_ema_profile_has_the_requested_relative_std():
    """Averaging theta_k = k and k^2 gives the mean and variance of the averaging profile over
    the step index: its std relative to the number of steps is the requested 0.1 (EDM2)."""
    model = torch.nn.Linear(1, 2, bias=False).double()
    ema = PowerEMA(model, relative_std=0.1)
    steps = 20000
    with torch.no_grad():
        for k in range(steps):
            model.weight.copy_(torch.tensor([[k / steps], [(k / steps) ** 2]], dtype=torch.float64))
            ema.update(model)
    first, second = ema.shadow["weight"].double().flatten().tolist()
    assert math.sqrt(second - first**2) == pytest.approx(0.1, rel=0.01)
    assert first == pytest.approx((ema.gamma + 1) / (ema.gamma + 2), rel=0.01)


def test_power_ema_first_update_copies_and_copy_to_writes_the_average():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).to(torch.bfloat16)
    ema = PowerEMA(model, relative_std=0.1)
    ema.update(model)
    assert all(v.dtype == torch.float32 for v in ema.shadow.values())
    assert torch.equal(ema.shadow["weight"], model.weight.float())
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert ema.num_updates == 2 and not torch.equal(ema.shadow["weight"], model.weight.float())
    target = torch.nn.Linear(3, 2)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.shadow["weight"])
