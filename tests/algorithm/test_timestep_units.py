"""What the velocity network is shown as its timestep: float32 or wider whatever the sample's dtype,
in the network's own units (its ``TIMESTEP_SCALE``) in the teacher samplers too, and never t = 0 from p_D."""

import math

import pytest
import torch

from megatron_rcm.diffusion import time_sampling
from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.diffusion.mlp_velocity import MLPVelocity
from megatron_rcm.diffusion.teacher_sampling import sample_rf_euler, sample_rf_unipc
from megatron_rcm.diffusion.time import rf_to_trigflow, shift_rf, trigflow_to_rf

F64 = torch.float64


class _Recording:
    """A velocity network that returns fixed random velocities and records the timesteps it sees."""

    def __init__(self, velocity):
        self.velocity, self.timesteps = velocity, []

    def __call__(self, x, timestep, text):
        self.timesteps.append(timestep)
        return self.velocity.to(x.dtype)

    def jvp(self, x, timestep, text, x_tangent, timestep_tangent):
        self.timesteps.append(timestep)
        return self.velocity.to(x.dtype), torch.zeros_like(x)


def test_a_bfloat16_sample_is_shown_a_float32_timestep():
    # 1000 s in bfloat16 keeps about three significant digits (500.2 -> 500); float32 keeps seven
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(5, 2, 3, generator=g).bfloat16()
    t = 0.1 + 1.4 * torch.rand(5, generator=g, dtype=F64)
    net = _Recording(torch.randn(5, 2, 3, generator=g))
    denoiser = TrigFlowDenoiser(net)
    text = torch.randn(5, 3, 4, generator=g).bfloat16()
    denoiser.predict(x_t, t, text)
    x_t_tangent = torch.randn(5, 2, 3, generator=g).bfloat16()
    denoiser.predict_jvp(x_t, t, text, x_t_tangent, torch.randn(5, generator=g, dtype=F64))
    expected = 1000 * trigflow_to_rf(t)
    for timestep in net.timesteps:
        assert timestep.dtype == torch.float32
        torch.testing.assert_close(timestep.double(), expected, rtol=2e-7, atol=0)
    assert (expected.bfloat16().double() - expected).abs().max() > 0.1  # what bfloat16 would have lost


class _UnitTimestep(torch.nn.Module):
    """The same network taking its RF time itself as the timestep (``TIMESTEP_SCALE`` 1, as Cosmos)."""

    TIMESTEP_SCALE = 1.0

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x, timestep, text):
        self.seen.append(timestep)
        return self.net(x, 1000 * timestep, text)


@pytest.mark.parametrize("sampler", [sample_rf_euler, sample_rf_unipc])
def test_teacher_samplers_give_the_network_its_own_timestep_units(sampler):
    torch.manual_seed(1)
    net = MLPVelocity(6, 4, hidden=32).double()
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(3, 6, generator=g, dtype=F64)
    text = torch.randn(3, 2, 4, generator=g, dtype=F64)
    unit = _UnitTimestep(net)
    with torch.no_grad():
        ours = sampler(unit, noise, text, 4, shift=3.0)
        reference = sampler(net, noise, text, 4, shift=3.0)
    assert all(0 < s.min() and s.max() <= 1 for s in unit.seen)  # RF times, not 1000 x
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    assert (ours - noise).abs().max() > 0.1


def test_p_D_redraws_a_zero_uniform_draw(monkeypatch):
    """u = 0 would give t = 0, where x0 is undefined: such draws are redrawn, the others kept."""
    rand, calls = torch.rand, []

    def first_draw_has_zeros(*args, **kwargs):
        u = rand(*args, **kwargs)
        if not calls:
            u[::2] = 0.0
        calls.append(u.clone())
        return u

    monkeypatch.setattr(torch, "rand", first_draw_has_zeros)
    t = time_sampling.sample_time_dmd(6, 5.0, generator=torch.Generator().manual_seed(3))
    monkeypatch.undo()
    assert len(calls) >= 2 and (t > 0).all() and (t <= math.pi / 2).all()
    first, second = calls[0], calls[1]
    kept = first != 0
    expected = torch.where(kept, first, second)
    torch.testing.assert_close(t, rf_to_trigflow(shift_rf(expected, 5.0)), rtol=0, atol=0)
