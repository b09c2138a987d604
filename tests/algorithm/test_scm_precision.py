"""The sCM target g (docs/math.md eq. 3.2) is built and normalised in float64 from a bfloat16
network's predictions: near the consistency function g is a small difference of large terms,
which bfloat16 arithmetic (three significant digits) would swamp."""

import pytest
import torch

from megatron_rcm.diffusion.time import expand_like
from megatron_rcm.losses.scm import scm_loss, scm_tangent
from .conftest import GaussianProblem


class _Bfloat16Predictions:
    """A float64 denoiser whose predictions come back rounded to bfloat16, as a bfloat16 network's do."""

    def __init__(self, denoiser):
        self.denoiser = denoiser

    def predict(self, x_t, t, text):
        prediction = self.denoiser.predict(x_t, t, text)
        return type(prediction)(*(p.bfloat16() for p in prediction))

    def predict_jvp(self, x_t, t, text, x_t_tangent, t_tangent):
        tangent = self.denoiser.predict_jvp(x_t, t, text, x_t_tangent, t_tangent)
        return type(tangent)(*(p.bfloat16() for p in tangent))


def test_the_target_of_bfloat16_predictions_is_built_in_float64():
    problem = GaussianProblem(seed=9)
    with torch.no_grad():  # a student close to its consistency function: g is small against F
        problem.student_net.mean_shift.copy_(0.05 * problem.randn(*problem.shape[1:]))
    student, teacher = _Bfloat16Predictions(problem.student), _Bfloat16Predictions(problem.teacher)
    x0, eps, t = problem.data().bfloat16(), problem.randn(*problem.shape).bfloat16(), problem.rand_times()
    loss, diagnostics = scm_loss(student, teacher, x0, eps, t, problem.text)

    # eq. 3.1 and 3.2 in float64 on the same bfloat16 predictions
    x_t = expand_like(torch.cos(t), x0) * x0 + expand_like(torch.sin(t), x0) * eps
    with torch.no_grad():
        F_teacher = teacher.predict(x_t, t, problem.text).F
        scale = torch.cos(t) * torch.sin(t)
        jvp = student.predict_jvp(x_t, t, problem.text, expand_like(scale, x_t) * F_teacher, scale)
    g = scm_tangent(x_t.double(), t, jvp.F.double(), jvp.F_tangent.double(), F_teacher.double(), 1.0)
    norms = g.flatten(1).norm(dim=1)
    assert (norms < 0.2 * F_teacher.double().flatten(1).norm(dim=1)).all()  # the cancelling regime
    assert diagnostics["scm/tangent_norm"].item() == pytest.approx(norms.mean().item(), rel=1e-12)
    # eq. 3.4: the sum of (g / (||g|| + 0.1))^2 per sample, mean over the batch
    assert loss.item() == pytest.approx(((norms / (norms + 0.1)) ** 2).mean().item(), rel=1e-12)
