import math

import pytest
import torch

from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.diffusion.guidance import ClassifierFreeGuidance

from .gaussian import GaussianConsistencyVelocity, GaussianVelocity

SHAPE = (6, 2, 1, 2, 2)  # B, C, T, H, W
TEXT_TOKENS = 3


class GaussianProblem:
    """x0 ~ N(mu(text), diag(std^2)); a CFG teacher (exact velocity) and its exact consistency
    student (guided mean), with fresh random std, text and negative embedding."""

    def __init__(self, seed, cfg_scale=3.0, shape=SHAPE):
        g = torch.Generator().manual_seed(seed)
        dim = math.prod(shape[1:])
        self.shape, self.cfg_scale, self.generator = shape, cfg_scale, g
        self.std = 0.3 + torch.rand(shape[1:], generator=g, dtype=torch.float64)
        self.text = torch.randn(shape[0], TEXT_TOKENS, dim, generator=g, dtype=torch.float64)
        self.negative = torch.randn(TEXT_TOKENS, dim, generator=g, dtype=torch.float64)
        self.teacher_net = GaussianVelocity(self.std)
        self.teacher = TrigFlowDenoiser(ClassifierFreeGuidance(self.teacher_net, self.negative, cfg_scale))
        self.student_net = GaussianConsistencyVelocity(self.std, self.negative, cfg_scale)
        self.student = TrigFlowDenoiser(self.student_net)
        self.guided_mean = self.student_net.mean(self.text, shape).detach()

    def randn(self, *shape):
        return torch.randn(*shape, generator=self.generator, dtype=torch.float64)

    def rand_times(self, low=0.05, high=1.55):
        return low + (high - low) * torch.rand(self.shape[0], generator=self.generator, dtype=torch.float64)

    def data(self):
        return self.guided_mean + self.std * self.randn(*self.shape)


@pytest.fixture
def gaussian():
    return GaussianProblem(seed=0)
