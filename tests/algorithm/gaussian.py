"""Networks with known answers for x0 ~ N(mu(text), diag(std^2)), in the Wan interface.

mu is read from the text embedding: the first token, reshaped to the data shape. Along the RF
path x_s = (1 - s) x0 + s eps the marginal is N((1 - s) mu, (1 - s)^2 std^2 + s^2), so
E[x0 | x_s] and E[eps | x_s] and the exact velocity are affine in x_s; the probability-flow ODE
keeps (x - mean) / std fixed, which gives the exact consistency function.
"""

import torch
from torch import nn


def first_token_mean(text: torch.Tensor, shape) -> torch.Tensor:
    return text[:, 0].reshape(shape)


class ForwardModeJvp:
    @torch.no_grad()
    def jvp(self, x, timestep, text, x_tangent, timestep_tangent):
        return torch.func.jvp(lambda a, b: self(a, b, text), (x, timestep), (x_tangent, timestep_tangent))


def _rf_coefficients(timestep, x):
    s = (timestep / 1000).reshape(-1, *[1] * (x.dim() - 1))
    return s, 1 - s


class GaussianVelocity(ForwardModeJvp, nn.Module):
    """Exact RF velocity E[eps - x0 | x_s] of N(mu(text) + mean_shift, diag(exp(log_std)^2))."""

    def __init__(self, std: torch.Tensor, mean_shift: torch.Tensor = None):
        super().__init__()
        self.log_std = nn.Parameter(std.log())
        self.mean_shift = nn.Parameter(torch.zeros_like(std) if mean_shift is None else mean_shift)

    def forward(self, x, timestep, text):
        s, a = _rf_coefficients(timestep, x)
        mu = first_token_mean(text, x.shape) + self.mean_shift
        std2 = self.log_std.exp() ** 2
        residual = (x - a * mu) / (a**2 * std2 + s**2)
        x0 = mu + a * std2 * residual
        eps = s * residual
        return eps - x0


class GaussianConsistencyVelocity(ForwardModeJvp, nn.Module):
    """The velocity whose x0 prediction is the exact consistency function (probability-flow ODE
    endpoint) of N(mu(text) + mean_shift, diag(exp(log_std)^2)): f = mu + std (x_s - (1 - s) mu) /
    sqrt((1 - s)^2 std^2 + s^2), and v = (x_s - f) / s so that x_s - s v = f."""

    def __init__(self, std: torch.Tensor, mean_shift: torch.Tensor = None):
        super().__init__()
        self.log_std = nn.Parameter(std.log())
        self.mean_shift = nn.Parameter(torch.zeros_like(std) if mean_shift is None else mean_shift)

    def consistency(self, x, timestep, text):
        s, a = _rf_coefficients(timestep, x)
        mu = first_token_mean(text, x.shape) + self.mean_shift
        std = self.log_std.exp()
        return mu + std * (x - a * mu) / torch.sqrt(a**2 * std**2 + s**2)

    def forward(self, x, timestep, text):
        s, _ = _rf_coefficients(timestep, x)
        return (x - self.consistency(x, timestep, text)) / s


def guided_text(text: torch.Tensor, negative: torch.Tensor, scale: float) -> torch.Tensor:
    """For equal variances CFG on the exact velocities is the exact velocity of the guided mean
    mu_u + w (mu_c - mu_u) (the velocity is affine in mu with weights that sum to one)."""
    return negative + scale * (text - negative)
