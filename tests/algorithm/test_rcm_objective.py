"""The rCM objective put together (losses.rcm) on Gaussian data: each term at its recipe weight and
size scale, the warm-up ratio from the iteration, and each network's rollout length from its own
update counter (docs/math.md sections 3 and 4)."""

import math

import pytest
import torch

from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.losses.config import RCMConfig
from megatron_rcm.losses.dmd import dmd_loss, student_rollout
from megatron_rcm.losses.rcm import Denoisers, IterationNoise, critic_loss, student_loss
from megatron_rcm.losses.scm import scm_loss
from .conftest import GaussianProblem
from .gaussian import GaussianVelocity

SHAPE = (4, 2, 1, 2, 2)


def _setup(seed):
    """A student and a fake score both off by fresh offsets (so both terms are non-zero), and the
    iteration's draws: four rollout noises, as the trainer draws for max_rollout_steps 4."""
    problem = GaussianProblem(seed=seed, shape=SHAPE)
    fake_net = GaussianVelocity(problem.std, problem.negative, problem.cfg_scale)
    with torch.no_grad():
        problem.student_net.mean_shift.copy_(0.3 * problem.randn(*SHAPE[1:]))
        fake_net.mean_shift.copy_(0.3 * problem.randn(*SHAPE[1:]))
    denoisers = Denoisers(problem.teacher, problem.student, TrigFlowDenoiser(fake_net))
    noise = IterationNoise(eps=problem.randn(*SHAPE), t_scm=problem.rand_times(),
                           rollout=[problem.randn(*SHAPE) for _ in range(4)], t_dmd=problem.rand_times(),
                           eps_dmd=problem.randn(*SHAPE))
    return problem, denoisers, noise


def test_student_loss_is_each_term_at_its_weight_and_the_dmd_size_scale():
    problem, denoisers, noise = _setup(seed=0)
    rcm = RCMConfig(scm_weight=7.0, dmd_weight=0.3, dmd_reference_numel=50, tangent_warmup=4)
    x0 = problem.data()
    loss, diagnostics = student_loss(denoisers, rcm, x0, problem.text, noise, iteration=6, student_updates=2)
    scm, _ = scm_loss(problem.student, problem.teacher, x0, noise.eps, noise.t_scm, problem.text, 1.0)
    # student update 2 rolls out 3 steps (eq. 4.1), on the first three of the drawn noises
    rollout = student_rollout(problem.student, noise.rollout[:3], problem.text, rcm.mid_times)
    dmd, _ = dmd_loss(rollout, noise.t_dmd, noise.eps_dmd, problem.text, problem.teacher, denoisers.fake_score)
    size_scale = math.sqrt(50 / math.prod(SHAPE[1:]))  # per sample: N = C T H W = 8
    assert scm.item() > 1e-3 and dmd.item() > 1e-3
    assert loss.item() == pytest.approx(7.0 * scm.item() + 0.3 * size_scale * dmd.item(), rel=1e-12)
    assert diagnostics["loss/scm"].item() == pytest.approx(scm.item(), rel=1e-12)
    assert diagnostics["loss/dmd"].item() == pytest.approx(dmd.item(), rel=1e-12)


def test_the_warm_up_ratio_comes_from_the_iteration():
    """Iteration 6 of an 8-iteration warm-up: r = 6 / 8 (eq. 3.2), whatever the update count."""
    problem, denoisers, noise = _setup(seed=1)
    rcm = RCMConfig(scm_weight=3.0, tangent_warmup=8)
    x0 = problem.data()
    loss, diagnostics = student_loss(denoisers, rcm, x0, problem.text, noise, iteration=6, student_updates=1)
    scm, _ = scm_loss(problem.student, problem.teacher, x0, noise.eps, noise.t_scm, problem.text, 0.75)
    full, _ = scm_loss(problem.student, problem.teacher, x0, noise.eps, noise.t_scm, problem.text, 1.0)
    assert diagnostics["scm/warmup_ratio"] == 0.75 and "loss/dmd" not in diagnostics  # DMD waits for the warm-up
    assert loss.item() == pytest.approx(3.0 * scm.item(), rel=1e-12)
    assert abs(scm.item() - full.item()) > 1e-6 * full.item()  # the ratio matters for this loss


class _Counting:
    """A denoiser that counts its x0 calls: one per rollout step."""

    def __init__(self, denoiser):
        self.denoiser, self.x0_calls = denoiser, 0

    def x0(self, x_t, t, text):
        self.x0_calls += 1
        return self.denoiser.x0(x_t, t, text)


@pytest.mark.parametrize("updates", [0, 1, 2, 3, 4, 6])
def test_each_network_rolls_out_as_many_steps_as_its_own_update_count_says(updates):
    """n = updates % 4 + 1 (eq. 4.1): the student's count sets its rollouts, the fake score's its
    critic rollouts, not the iteration (here 7: four steps if it did)."""
    problem, denoisers, noise = _setup(seed=2)
    rcm = RCMConfig(scm_weight=0.0, tangent_warmup=0)  # DMD only: the rollout's are the only x0 calls
    student = _Counting(problem.student)
    student_loss(denoisers._replace(student=student), rcm, problem.data(), problem.text, noise, iteration=7,
                 student_updates=updates)
    assert student.x0_calls == updates % 4 + 1
    student = _Counting(problem.student)
    critic_loss(denoisers._replace(student=student), rcm, problem.text, noise, critic_updates=updates)
    assert student.x0_calls == updates % 4 + 1
