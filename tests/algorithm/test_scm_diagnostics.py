"""The sCM term's diagnostics (losses.scm.scm_loss) measure what they name, over the finite samples
only: checked against the tangent of eq. 3.1 by torch.func.jvp and eq. 3.2 written out."""

import math

import pytest
import torch

from megatron_rcm.diffusion.time import expand_like
from megatron_rcm.losses.scm import scm_loss
from .conftest import GaussianProblem


def _norms(x):
    return x.flatten(1).norm(dim=1)


def test_diagnostics_are_means_over_the_finite_samples_of_the_named_quantities():
    problem = GaussianProblem(seed=8)
    with torch.no_grad():  # a student off its consistency function: g is not zero
        problem.student_net.mean_shift.copy_(0.3 * problem.randn(*problem.shape[1:]))
    x0, eps, t = problem.data(), problem.randn(*problem.shape), problem.rand_times()
    broken = x0.clone()
    broken[1, 1, 0, 0, 1] = math.nan
    _, diagnostics = scm_loss(problem.student, problem.teacher, broken, eps, t, problem.text)

    keep = [i for i in range(problem.shape[0]) if i != 1]
    x0, eps, t, text = x0[keep], eps[keep], t[keep], problem.text[keep]
    cos, sin = expand_like(torch.cos(t), x0), expand_like(torch.sin(t), x0)
    x_t = cos * x0 + sin * eps
    with torch.no_grad():
        F_teacher = problem.teacher.predict(x_t, t, text).F
        scale = torch.cos(t) * torch.sin(t)
        F_student, F_tangent = torch.func.jvp(lambda x, tt: problem.student.predict(x, tt, text).F, (x_t, t),
                                              (expand_like(scale, x_t) * F_teacher, scale))  # eq. 3.1
    g = -cos**2 * (F_student - F_teacher) - (cos * sin * x_t + F_tangent)  # eq. 3.2 at r = 1
    expected = {"scm/tangent_norm": _norms(g), "scm/F_tangent_norm": _norms(F_tangent),
                "scm/teacher_F_norm": _norms(F_teacher)}
    for name, norms in expected.items():
        assert norms.min() > 1e-3, name
        assert diagnostics[name].item() == pytest.approx(norms.mean().item(), rel=1e-10), name
    assert diagnostics["scm/nonfinite_tangent"].item() == diagnostics["scm/nonfinite_F"].item() == 1
