"""Time maps (eq. 1.1, 1.2) and the TrigFlow wrapper (eq. 2.1) with its tangents."""

import math

import pytest
import torch

from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.diffusion.mlp_velocity import MLPVelocity
from megatron_rcm.diffusion.time import (
    check_trigflow_time, rf_to_trigflow, shift_rf, sigma_to_trigflow, trigflow_to_rf)

SHAPE = (5, 2, 1, 2, 3)  # B, C, T, H, W
F64 = torch.float64


def test_time_maps_invert_each_other_eq_1_1():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(1000, generator=g, dtype=F64) * math.pi / 2
    s = trigflow_to_rf(t)
    assert torch.allclose(rf_to_trigflow(s), t, atol=1e-13)
    assert torch.allclose(s / (1 - s), torch.tan(t), rtol=1e-11)
    assert torch.allclose(sigma_to_trigflow(torch.tan(t)), t, atol=1e-13)
    assert rf_to_trigflow(torch.tensor([1.0], dtype=F64)).item() == pytest.approx(math.pi / 2)
    # A TrigFlow sample is (cos t + sin t) times the RF sample at the matching s.
    x0, eps = torch.randn(2, 1000, generator=g, dtype=F64)
    x_t = torch.cos(t) * x0 + torch.sin(t) * eps
    x_s = (1 - s) * x0 + s * eps
    assert torch.allclose(x_t, (torch.cos(t) + torch.sin(t)) * x_s, atol=1e-13)


def test_shift_eq_1_2():
    s = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    assert shift_rf(s, 5.0).tolist() == pytest.approx([0.0, 2.5 / 3.0, 1.0])
    assert torch.equal(shift_rf(s, 1.0), s)
    with pytest.raises(ValueError):
        shift_rf(s, 0.0)


@pytest.mark.parametrize("t", [0.0, -0.1, math.pi / 2 + 0.01])
def test_time_outside_range_is_rejected(t):
    with pytest.raises(ValueError):
        check_trigflow_time(torch.tensor([0.5, t], dtype=F64))


class _OracleVelocity:
    """Returns the true RF velocity eps - x0 of one known (x0, eps) pair, and records its inputs."""

    def __init__(self, x0, eps):
        self.x0, self.eps, self.calls = x0, eps, []

    def __call__(self, x, timestep, text):
        self.calls.append((x, timestep))
        return self.eps - self.x0


def test_wrapper_inverts_eq_2_1():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, *SHAPE, generator=g, dtype=F64)
    t = torch.rand(SHAPE[0], generator=g, dtype=F64) * 1.5 + 0.01
    net = _OracleVelocity(x0, eps)
    cos, sin = (f(t).reshape(-1, 1, 1, 1, 1) for f in (torch.cos, torch.sin))
    x_t = cos * x0 + sin * eps
    prediction = TrigFlowDenoiser(net).predict(x_t, t, torch.randn(SHAPE[0], 3, 4, generator=g, dtype=F64))
    assert torch.allclose(prediction.x0, x0, atol=1e-12)
    assert torch.allclose(prediction.F, cos * eps - sin * x0, atol=1e-12)
    # The network saw the RF sample at the RF timestep 1000 s.
    seen_x, seen_timestep = net.calls[0]
    s = trigflow_to_rf(t)
    assert torch.allclose(seen_x, (1 - s).reshape(-1, 1, 1, 1, 1) * x0 + s.reshape(-1, 1, 1, 1, 1) * eps)
    assert torch.allclose(seen_timestep, 1000 * s)


def _mlp_problem(seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data_dim = math.prod(SHAPE[1:])
    net = MLPVelocity(data_dim, 4, hidden=32).double()
    x_t = torch.randn(SHAPE, generator=g, dtype=F64)
    t = torch.rand(SHAPE[0], generator=g, dtype=F64) * 1.4 + 0.1
    text = torch.randn(SHAPE[0], 3, 4, generator=g, dtype=F64)
    dx = torch.randn(SHAPE, generator=g, dtype=F64)
    dt = torch.randn(SHAPE[0], generator=g, dtype=F64)
    return TrigFlowDenoiser(net), x_t, t, text, dx, dt


def test_wrapper_tangent_matches_forward_ad_and_finite_differences():
    denoiser, x_t, t, text, dx, dt = _mlp_problem(2)
    ours = denoiser.predict_jvp(x_t, t, text, dx, dt)
    with torch.no_grad():
        reference_primal, reference_tangent = torch.func.jvp(
            lambda x, tt: tuple(denoiser.predict(x, tt, text)), (x_t, t), (dx, dt))
        delta = 1e-6
        plus = denoiser.predict(x_t + delta * dx, t + delta * dt, text)
        minus = denoiser.predict(x_t - delta * dx, t - delta * dt, text)
    for i, name in enumerate(["x0", "F"]):
        assert torch.allclose(ours[i], reference_primal[i], atol=1e-13), name
        assert torch.allclose(ours[i + 2], reference_tangent[i], atol=1e-11), name
        finite_difference = (plus[i] - minus[i]) / (2 * delta)
        assert torch.allclose(ours[i + 2], finite_difference, atol=1e-7), name
    assert reference_tangent[1].abs().max() > 1e-2  # the check has something to compare


def test_F_and_x0_predictions_are_consistent():
    denoiser, x_t, t, text, _, _ = _mlp_problem(3)
    with torch.no_grad():
        x0, F = denoiser.predict(x_t, t, text)
    sin = torch.sin(t).reshape(-1, 1, 1, 1, 1)
    cos = torch.cos(t).reshape(-1, 1, 1, 1, 1)
    assert torch.allclose(F, (cos * x_t - x0) / sin, atol=1e-12)  # eq. 2.1
