"""TrigFlow denoiser around a rectified-flow velocity network (docs/math.md eq. 2.1).

The network has the model families' interface: ``net(x, timestep, text) -> v`` with the RF
timestep ``timestep_scale * s`` (the family's ``TIMESTEP_SCALE``: 1000 or 1, see docs/models.md)
and RF velocity ``v = eps - x0``, and ``net.jvp(x, timestep, text, x_tangent,
timestep_tangent) -> (v, v_tangent)``, an exact no-grad forward-mode pass. The tangents of the
x0 and F predictions are built from that one jvp by the chain rule through c_in, c_noise,
c_skip and c_out, all functions of t: the big model's jvp is the only forward-mode pass.
"""

from typing import NamedTuple

import torch

from megatron_rcm.diffusion.time import check_trigflow_time, expand_like
from megatron_rcm.diffusion.time import timestep_scale as network_timestep_scale


class TrigFlowPrediction(NamedTuple):
    x0: torch.Tensor
    F: torch.Tensor


class TrigFlowTangent(NamedTuple):
    x0: torch.Tensor
    F: torch.Tensor
    x0_tangent: torch.Tensor
    F_tangent: torch.Tensor


class TrigFlowDenoiser:
    """x0 and TrigFlow-velocity predictions of an RF velocity network (eq. 2.1).

    With c = cos t + sin t: the network sees c_in x_t = x_t / c (the RF sample x_s) at timestep
    c_noise = timestep_scale sin t / c, and
        x0_hat = x_t / c - (sin t / c) v,
        F_hat = (cos t x_t - x0_hat) / sin t = ((cos t - sin t) x_t + v) / c.
    The second form of F_hat is the same expression with sin t cancelled, so it stays finite as
    t -> 0. Teacher (wrap a ClassifierFreeGuidance net), student and fake score all use this.
    """

    def __init__(self, net, timestep_scale: float | None = None):
        self.net = net
        self.timestep_scale = network_timestep_scale(net) if timestep_scale is None else timestep_scale

    def _coefficients(self, t: torch.Tensor):
        check_trigflow_time(t)
        cos, sin = torch.cos(t), torch.sin(t)
        c = cos + sin
        return cos, sin, c, self.timestep_scale * sin / c

    @staticmethod
    def _timestep_dtype(x_t):
        # Never below float32: 1000 s in bfloat16 keeps only about three significant digits.
        return torch.promote_types(x_t.dtype, torch.float32)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> TrigFlowPrediction:
        """x0_hat and F_hat at TrigFlow time t [B] (eq. 2.1); gradients flow into the network."""
        cos, sin, c, c_noise = self._coefficients(t)
        velocity = self.net(x_t / expand_like(c, x_t), c_noise.to(self._timestep_dtype(x_t)), text)
        cos, sin, c = (expand_like(a, x_t) for a in (cos, sin, c))
        x0 = (x_t - sin * velocity) / c
        F = ((cos - sin) * x_t + velocity) / c
        return TrigFlowPrediction(x0, F)

    def x0(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.predict(x_t, t, text).x0

    @torch.no_grad()
    def predict_jvp(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        x_t_tangent: torch.Tensor,
        t_tangent: torch.Tensor,
    ) -> TrigFlowTangent:
        """x0_hat, F_hat and their directional derivatives along (x_t_tangent, t_tangent).

        Chain rule through eq. 2.1, with dc = (cos t - sin t) dt:
            d(net input) = dx_t / c - x_t dc / c^2,   d(c_noise) = timestep_scale dt / c^2,
            dx0 = (dx_t - sin t dv - cos t v dt - x0 dc) / c,
            dF = ((cos t - sin t) dx_t - c x_t dt + dv - F dc) / c.
        Used with the tangents of eq. 3.1 by the sCM term.
        """
        cos, sin, c, c_noise = self._coefficients(t)
        c_noise_tangent = self.timestep_scale * t_tangent / c**2
        cos, sin, c, dt = (expand_like(a, x_t) for a in (cos, sin, c, t_tangent))
        dc = (cos - sin) * dt
        net_input = x_t / c
        net_input_tangent = x_t_tangent / c - x_t * dc / c**2
        velocity, velocity_tangent = self.net.jvp(
            net_input, c_noise.to(self._timestep_dtype(x_t)), text, net_input_tangent,
            c_noise_tangent.to(self._timestep_dtype(x_t)),
        )
        x0 = (x_t - sin * velocity) / c
        x0_tangent = (x_t_tangent - sin * velocity_tangent - cos * velocity * dt - x0 * dc) / c
        F = ((cos - sin) * x_t + velocity) / c
        F_tangent = ((cos - sin) * x_t_tangent - c * x_t * dt + velocity_tangent - F * dc) / c
        return TrigFlowTangent(x0, F, x0_tangent, F_tangent)
