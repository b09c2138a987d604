"""diffusers' WanTransformer3DModel as a float64 oracle for the Megatron Wan model (see ``diffusers_float64``)."""

import torch
from diffusers import WanTransformer3DModel

from megatron_rcm.models.diffusers_float64 import DTYPE, float64_exact
from megatron_rcm.models.wan import WanModel, load_diffusers_weights, wan_config

from .oracle import random_inputs, relative_error, run_oracle  # noqa: F401 (relative_error: for the tests)


def diffusers_model(config, seed):
    """A float64 diffusers model of ``config``'s shape, every parameter random (norm weights too)."""
    torch.manual_seed(seed)
    with float64_exact():
        model = WanTransformer3DModel(
            patch_size=config.patch_size, num_attention_heads=config.num_attention_heads,
            attention_head_dim=config.kv_channels, in_channels=config.in_channels,
            out_channels=config.out_channels, text_dim=config.text_dim, freq_dim=config.freq_dim,
            ffn_dim=config.ffn_hidden_size, num_layers=config.num_layers, cross_attn_norm=config.cross_attn_norm,
            eps=config.layernorm_epsilon,
        ).to(DTYPE)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def config(name, **overrides):
    return wan_config(name, params_dtype=DTYPE, use_cpu_initialization=True, **overrides)


def our_model(cfg, diffusers):
    return load_diffusers_weights(WanModel(cfg), diffusers)


def inputs(cfg, batch, latent_shape, text_len, seed):
    """(x, t, text, x_t, t_t, w): latents, timesteps in (0, 1000), text, tangents and an output weight."""
    return random_inputs(cfg, batch, latent_shape, text_len, seed, t_max=1000)


def oracle(model, data):
    """diffusers' forward, JVP (torch.func.jvp) and gradients of sum(w * out), in exact float64."""
    return run_oracle(lambda x, t: model(x, t, data["text"]).sample, model, data)
