"""The guards of the DMD direction (docs/math.md eq. 4.2 and 4.3): its scale is clipped below at 1e-5,
and a sample whose direction is not finite contributes zero, to the loss and to the gradient, and is
counted."""

import pytest
import torch

from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.losses.dmd import dmd_direction, dmd_loss
from .conftest import GaussianProblem
from .gaussian import GaussianVelocity

F64 = torch.float64


class _Fixed:
    """A denoiser whose x0 prediction is given."""

    def __init__(self, x0):
        self.value = x0

    def x0(self, x_t, t, text):
        return self.value


def test_the_direction_scale_is_clipped_below_at_1e_5():
    g = torch.Generator().manual_seed(0)
    G = torch.randn(3, 2, 4, generator=g, dtype=F64)
    t_D = 0.1 + 1.4 * torch.rand(3, generator=g, dtype=F64)
    teacher_x0 = G.clone()  # sample 0: the teacher reproduces G exactly, scale 0
    teacher_x0[1] += 1e-8 * torch.randn(2, 4, generator=g, dtype=F64)  # sample 1: scale ~1e-8, below the clip
    teacher_x0[2] += torch.randn(2, 4, generator=g, dtype=F64)  # sample 2: scale ~0.8, unclipped
    gap = 1e-3 * torch.randn(3, 2, 4, generator=g, dtype=F64)
    d = dmd_direction(G, t_D, torch.randn(3, 2, 4, generator=g, dtype=F64), None, _Fixed(teacher_x0),
                      _Fixed(teacher_x0 + gap))
    scale = (G - teacher_x0).abs().mean(dim=(1, 2))
    assert scale[1] < 1e-6 and scale[2] > 0.1
    expected = gap / torch.clamp(scale, min=1e-5)[:, None, None]
    torch.testing.assert_close(d, expected, rtol=1e-12, atol=0)


class _BrokenForOneSample:
    """The fake score's x0 with one element of sample ``broken`` not a number."""

    def __init__(self, denoiser, broken):
        self.denoiser, self.broken = denoiser, broken

    def x0(self, x_t, t, text):
        x0 = self.denoiser.x0(x_t, t, text).clone()
        x0[self.broken, 0, 0, 1, 0] = float("nan")
        return x0


def test_a_non_finite_direction_counts_zero_and_leaves_the_gradient_finite():
    problem = GaussianProblem(seed=1)
    fake_net = GaussianVelocity(problem.std, problem.negative, problem.cfg_scale)
    with torch.no_grad():
        fake_net.mean_shift.copy_(0.3 * problem.randn(*problem.shape[1:]))
    fake = TrigFlowDenoiser(fake_net)
    G = problem.data().requires_grad_(True)
    t_D, eps_D = problem.rand_times(), problem.randn(*problem.shape)
    loss, diagnostics = dmd_loss(G, t_D, eps_D, problem.text, problem.teacher, _BrokenForOneSample(fake, 2))
    loss.backward()
    d = dmd_direction(G, t_D, eps_D, problem.text, problem.teacher, fake)  # the healthy direction
    kept = [i for i in range(problem.shape[0]) if i != 2]
    batch = problem.shape[0]
    # eq. 4.3 over the batch of six, the broken sample counting zero
    assert loss.item() == pytest.approx(d[kept].pow(2).sum().item() / batch, rel=1e-12)
    assert torch.isfinite(G.grad).all() and G.grad[2].abs().max() == 0
    torch.testing.assert_close(G.grad[kept], 2 * d[kept] / batch, rtol=1e-12, atol=1e-14)
    assert diagnostics["dmd/nonfinite_direction"].item() == 1 and d[kept].abs().max() > 1e-2
