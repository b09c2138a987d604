"""Classifier-free guidance (eq. 2.2) through the wrapper, tangents included."""

import pytest
import torch

from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.diffusion.guidance import ClassifierFreeGuidance
from megatron_rcm.diffusion.mlp_velocity import MLPVelocity

F64 = torch.float64


def _problem():
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    net = MLPVelocity(6, 5, hidden=32).double()
    x_t = torch.randn(4, 6, generator=g, dtype=F64)
    t = torch.rand(4, generator=g, dtype=F64) * 1.4 + 0.1
    text = torch.randn(4, 2, 5, generator=g, dtype=F64)
    negative = torch.randn(2, 5, generator=g, dtype=F64)
    dx, dt = torch.randn(4, 6, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    return net, x_t, t, text, negative, dx, dt


def test_guided_predictions_and_tangents_combine_eq_2_2():
    net, x_t, t, text, negative, dx, dt = _problem()
    scale = 5.0
    guided = TrigFlowDenoiser(ClassifierFreeGuidance(net, negative, scale))
    plain = TrigFlowDenoiser(net)
    ours = guided.predict_jvp(x_t, t, text, dx, dt)
    cond = plain.predict_jvp(x_t, t, text, dx, dt)
    uncond = plain.predict_jvp(x_t, t, negative.expand_as(text), dx, dt)
    for ours_i, cond_i, uncond_i in zip(ours, cond, uncond):
        assert torch.allclose(ours_i, uncond_i + scale * (cond_i - uncond_i), atol=1e-12)
        assert (cond_i - uncond_i).abs().max() > 1e-3
    with torch.no_grad():
        assert torch.allclose(guided.predict(x_t, t, text).F, ours.F, atol=1e-13)


def test_scale_one_is_the_conditional_network():
    net, x_t, t, text, negative, _, _ = _problem()
    with torch.no_grad():
        guided = TrigFlowDenoiser(ClassifierFreeGuidance(net, negative, 1.0)).x0(x_t, t, text)
        assert torch.equal(guided, TrigFlowDenoiser(net).x0(x_t, t, text))


def test_negative_embedding_of_wrong_shape_is_rejected():
    net, x_t, t, text, _, _, _ = _problem()
    guided = ClassifierFreeGuidance(net, torch.randn(3, 5, dtype=F64), 2.0)
    with pytest.raises(ValueError, match="negative embedding"):
        guided(x_t, t * 600, text)
