"""diffusers' CosmosTransformer3DModel as a float64 oracle for the Megatron Cosmos model (see ``diffusers_float64``)."""

import torch
from diffusers import CosmosTransformer3DModel

from megatron_rcm.models.diffusers_float64 import DTYPE, float64_exact
from megatron_rcm.models.cosmos import (  # noqa: F401 (diffusers_forward: for the tests)
    CosmosModel,
    cosmos_config,
    diffusers_config,
    diffusers_forward,
    load_diffusers_weights,
)

from .oracle import random_inputs, relative_error, run_oracle  # noqa: F401 (relative_error: for the tests)


def diffusers_model(config, seed):
    """A float64 diffusers model of ``config``'s shape (through ``diffusers_config``), every
    parameter random (norm weights too)."""
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in diffusers_config(config).items() if not k.startswith("_")}
    with float64_exact():
        model = CosmosTransformer3DModel(**kwargs).to(DTYPE)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and "linear" not in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def config(name, **overrides):
    return cosmos_config(name, params_dtype=DTYPE, use_cpu_initialization=True, **overrides)


def our_model(cfg, diffusers):
    return load_diffusers_weights(CosmosModel(cfg), diffusers)


def inputs(cfg, batch, latent_shape, text_len, seed):
    """(x, t, text, x_t, t_t, w): latents, timesteps in (0, 1) as the pipeline passes them, T5-like
    states, tangents and an output weight."""
    return random_inputs(cfg, batch, latent_shape, text_len, seed, t_max=1)


def oracle(model, data, padding_mask=None):
    """diffusers' forward, JVP (torch.func.jvp) and gradients of sum(w * out), in exact float64;
    by default with the pipeline's all-zero padding mask."""
    return run_oracle(lambda x, t: diffusers_forward(model, x, t, data["text"], padding_mask), model, data)
