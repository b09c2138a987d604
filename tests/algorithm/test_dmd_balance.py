"""How the DMD/sCM balance of the student loss scales with the latent size N (docs/math.md section 4,
"Balance"): the summed DMD term's gradient grows as sqrt(N), the normalised sCM term's does not;
``dmd_reference_numel`` removes the dependence."""

import math

import pytest
import torch

from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.losses.config import RCMConfig
from megatron_rcm.losses.dmd import dmd_size_scale
from megatron_rcm.losses.rcm import Denoisers, IterationNoise, student_loss

from .conftest import GaussianProblem
from .gaussian import GaussianVelocity


def _gradient_norms(shape, seed, **config):
    """||d(scm_weight L_sCM)/dtheta||, ||d(dmd_weight L_DMD)/dtheta|| for a student and a fake score
    that are both wrong by a fresh per-element offset, on a Gaussian problem of this shape."""
    problem = GaussianProblem(seed=seed, shape=shape)
    with torch.no_grad():
        problem.student_net.mean_shift.copy_(0.3 * problem.randn(*shape[1:]))
    fake = GaussianVelocity(problem.std, problem.negative, problem.cfg_scale)
    with torch.no_grad():
        fake.mean_shift.copy_(0.3 * problem.randn(*shape[1:]))
    denoisers = Denoisers(problem.teacher, problem.student, TrigFlowDenoiser(fake))
    # the same times at every shape: the per-sample weights of both terms depend on them
    times = torch.Generator().manual_seed(seed)
    t_scm = torch.atan(torch.exp(1.6 * torch.randn(shape[0], generator=times, dtype=torch.float64)))
    t_dmd = 0.05 + 1.45 * torch.rand(shape[0], generator=times, dtype=torch.float64)
    noise = IterationNoise(eps=problem.randn(*shape), t_scm=t_scm, rollout=[problem.randn(*shape)],
                           t_dmd=t_dmd, eps_dmd=problem.randn(*shape))
    norms = []
    for weights in ({"dmd_weight": 0.0}, {"scm_weight": 0.0}):
        rcm = RCMConfig(tangent_warmup=0, max_rollout_steps=1, **{**config, **weights})
        problem.student_net.zero_grad()
        loss, _ = student_loss(denoisers, rcm, problem.data(), problem.text, noise, iteration=0, student_updates=0)
        loss.backward()
        norms.append(torch.cat([p.grad.flatten() for p in problem.student_net.parameters()]).norm().item())
    return norms


# N = 512 and 8192: sqrt ratio 4; both large enough that the 0.1 offset of eq. 3.3 is negligible
SMALL, LARGE = (16, 1, 2, 16, 16), (16, 1, 8, 32, 32)


@pytest.mark.parametrize("seed", [0, 1])
def test_summed_dmd_gradient_grows_as_sqrt_n_against_the_normalised_scm_gradient(seed):
    scm_small, dmd_small = _gradient_norms(SMALL, seed)
    scm_large, dmd_large = _gradient_norms(LARGE, seed)
    assert scm_large / scm_small == pytest.approx(1.0, rel=0.15)
    assert (dmd_large / scm_large) / (dmd_small / scm_small) == pytest.approx(4.0, rel=0.15)


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_numel_makes_the_balance_independent_of_n(seed):
    reference = 8192
    scm_small, dmd_small = _gradient_norms(SMALL, seed, dmd_reference_numel=reference)
    scm_large, dmd_large = _gradient_norms(LARGE, seed, dmd_reference_numel=reference)
    assert (dmd_large / scm_large) / (dmd_small / scm_small) == pytest.approx(1.0, rel=0.15)
    # at the reference size the scaled loss is the summed one
    assert _gradient_norms(LARGE, seed, dmd_reference_numel=reference) == pytest.approx(
        _gradient_norms(LARGE, seed), rel=1e-12)


def test_size_scale():
    assert dmd_size_scale(2048, 0) == 1.0
    assert dmd_size_scale(2048, 2096640) == pytest.approx(math.sqrt(1023.75))
    with pytest.raises(ValueError):
        dmd_size_scale(0, 10)
    with pytest.raises(ValueError, match="dmd_reference_numel"):
        RCMConfig(dmd_reference_numel=-1)
