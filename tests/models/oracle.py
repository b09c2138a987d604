"""What the model families' float64 oracles share: random inputs, the oracle's forward / JVP /
gradients of a diffusers transformer, the relative error, and the serial parity check."""

import importlib

import torch

from megatron_rcm.models.diffusers_float64 import DTYPE, float64_exact
from megatron_rcm.parallel import parallel_context


def family_oracle(family):
    """The test module ``tests.models.<family>_oracle`` (config, diffusers_model, our_model, inputs, oracle)."""
    return importlib.import_module(f"tests.models.{family}_oracle")

from megatron_rcm.testing import relative_error


def random_inputs(cfg, batch, latent_shape, text_len, seed, t_max):
    """(x, t, text, x_t, t_t, w): latents, timesteps in (0, t_max), text, tangents and an output weight."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=DTYPE)
    x = randn(batch, cfg.in_channels, *latent_shape)
    t = torch.rand(batch, generator=g, dtype=DTYPE) * t_max
    text = randn(batch, text_len, cfg.text_dim)
    out_shape = (batch, cfg.out_channels, *latent_shape)
    return dict(x=x, t=t, text=text, x_t=randn(*x.shape), t_t=randn(batch) * t_max / 10, w=randn(*out_shape))


def run_oracle(forward, model, data):
    """``forward(x, t)``'s output, JVP (torch.func.jvp) and the gradients of sum(w * out) of the
    input and of every parameter of the diffusers ``model``, in exact float64."""
    with float64_exact():
        x = data["x"].clone().requires_grad_()
        out = forward(x, data["t"])
        model.zero_grad()
        (out * data["w"]).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        _, out_t = torch.func.jvp(forward, (data["x"], data["t"]), (data["x_t"], data["t_t"]))
    return dict(out=out.detach(), out_t=out_t.detach(), x_grad=x.grad, grads=grads)


def check_against_oracle(model, data, expected, convert_grads, tol):
    """Our model's forward, JVP, input gradient and every parameter gradient against the oracle's;
    ``convert_grads`` maps the oracle's parameter gradients to ours (the family's weight map)."""
    x = data["x"].clone().requires_grad_()
    out = model(x, data["t"], data["text"])
    (out * data["w"]).sum().backward()
    out_p, out_t = model.jvp(data["x"], data["t"], data["text"], data["x_t"], data["t_t"])
    assert relative_error(out, expected["out"]) < tol
    assert relative_error(out_p, expected["out"]) < tol
    assert relative_error(out_t, expected["out_t"]) < tol
    assert relative_error(x.grad, expected["x_grad"]) < tol
    grads = {name: p.grad for name, p in model.named_parameters()}
    want = convert_grads(expected["grads"])
    assert want.keys() == grads.keys()
    for name, g in want.items():
        assert relative_error(grads[name], g) < tol, name


def check_serial(family, preset, batch, latent, text_len, tol, **overrides):
    """One process: the family's model loaded from a random float64 diffusers model against it;
    ``overrides`` change the preset's config fields."""
    oracle = family_oracle(family)
    cfg = oracle.config(preset, **overrides)
    reference = oracle.diffusers_model(cfg, seed=1)
    data = oracle.inputs(cfg, batch, latent, text_len, seed=2)
    expected = oracle.oracle(reference, data)
    convert = importlib.import_module(f"megatron_rcm.models.{family}").convert_diffusers_state_dict
    with parallel_context():
        check_against_oracle(oracle.our_model(cfg, reference), data, expected, lambda grads: convert(grads, cfg), tol)
