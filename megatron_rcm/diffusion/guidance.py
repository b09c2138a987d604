"""Classifier-free guidance with a negative-prompt embedding (docs/math.md eq. 2.2)."""

import torch


class ClassifierFreeGuidance:
    """A velocity network that returns v_uncond + w (v_cond - v_uncond).

    It has the network interface (``__call__`` and ``jvp``), so a TrigFlowDenoiser around it is the
    guided teacher. The x0 and F predictions of eq. 2.1 are affine in v with coefficients that depend
    only on (x_t, t), so guiding v is exactly eq. 2.2 on F and on x0, tangents included.
    The unconditional branch uses the fixed ``negative_embedding`` [L, D] (or [1, L, D]).
    """

    def __init__(self, net, negative_embedding: torch.Tensor, scale: float):
        self.net = net
        self.negative_embedding = negative_embedding
        self.scale = float(scale)

    @property
    def TIMESTEP_SCALE(self):  # noqa: N802 (the guided network's, see TrigFlowDenoiser)
        return self.net.TIMESTEP_SCALE

    def _negative(self, text: torch.Tensor) -> torch.Tensor:
        negative = self.negative_embedding.to(device=text.device, dtype=text.dtype)
        if negative.dim() == text.dim() - 1:
            negative = negative.unsqueeze(0)
        if negative.shape[1:] != text.shape[1:]:
            raise ValueError(
                f"negative embedding shape {tuple(negative.shape[1:])} does not match the text "
                f"embedding shape {tuple(text.shape[1:])}"
            )
        return negative.expand_as(text)

    def _combine(self, both: torch.Tensor) -> torch.Tensor:
        cond, uncond = both.chunk(2)
        return uncond + self.scale * (cond - uncond)

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return self.net(x, timestep, text)
        both = self.net(x.repeat(2, *[1] * (x.dim() - 1)), timestep.repeat(2),
                        torch.cat([text, self._negative(text)]))
        return self._combine(both)

    def jvp(self, x, timestep, text, x_tangent, timestep_tangent):
        if self.scale == 1.0:
            return self.net.jvp(x, timestep, text, x_tangent, timestep_tangent)
        repeat = (2, *[1] * (x.dim() - 1))
        velocity, velocity_tangent = self.net.jvp(
            x.repeat(repeat), timestep.repeat(2), torch.cat([text, self._negative(text)]),
            x_tangent.repeat(repeat), timestep_tangent.repeat(2),
        )
        return self._combine(velocity), self._combine(velocity_tangent)
