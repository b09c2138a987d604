"""Networks with known answers for x0 ~ N(mu(text), diag(std^2)), in the Wan interface.

mu is read from the text embedding: the first token, reshaped to the data shape, optionally
guided: mu_u + w (mu_c - mu_u) with mu_u from a negative embedding. For equal variances CFG on the
exact velocities IS the exact velocity of the guided mean (the velocity is affine in mu with
weights that sum to one), so the guided teacher's exact consistency function is known too.
Along x_s = (1 - s) x0 + s eps the marginal is N((1 - s) mu, (1 - s)^2 std^2 + s^2); the
probability-flow ODE keeps (x - mean) / std fixed, which gives the consistency function.
"""

import torch
from torch import nn


class _Gaussian(nn.Module):
    def __init__(self, std: torch.Tensor, negative: torch.Tensor = None, cfg_scale: float = 1.0):
        super().__init__()
        self.log_std = nn.Parameter(std.log())
        self.mean_shift = nn.Parameter(torch.zeros_like(std))
        self.negative, self.cfg_scale = negative, cfg_scale

    def mean(self, text, shape):
        mu = text[:, 0]
        if self.negative is not None:
            mu = self.negative[0] + self.cfg_scale * (mu - self.negative[0])
        return mu.reshape(shape) + self.mean_shift

    @staticmethod
    def rf_time(timestep, x):
        s = (timestep / 1000).reshape(-1, *[1] * (x.dim() - 1))
        return s, 1 - s

    @torch.no_grad()
    def jvp(self, x, timestep, text, x_tangent, timestep_tangent):
        return torch.func.jvp(lambda a, b: self(a, b, text), (x, timestep), (x_tangent, timestep_tangent))


class GaussianVelocity(_Gaussian):
    """Exact RF velocity E[eps - x0 | x_s]."""

    def forward(self, x, timestep, text):
        s, a = self.rf_time(timestep, x)
        mu, std2 = self.mean(text, x.shape), self.log_std.exp() ** 2
        residual = (x - a * mu) / (a**2 * std2 + s**2)
        return s * residual - (mu + a * std2 * residual)


class GaussianConsistencyVelocity(_Gaussian):
    """The velocity whose x0 prediction x_s - s v is the exact consistency function
    f = mu + std (x_s - (1 - s) mu) / sqrt((1 - s)^2 std^2 + s^2)."""

    def consistency(self, x, timestep, text):
        s, a = self.rf_time(timestep, x)
        mu, std = self.mean(text, x.shape), self.log_std.exp()
        return mu + std * (x - a * mu) / torch.sqrt(a**2 * std**2 + s**2)

    def forward(self, x, timestep, text):
        s, _ = self.rf_time(timestep, x)
        return (x - self.consistency(x, timestep, text)) / s
