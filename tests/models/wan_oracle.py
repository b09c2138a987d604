"""diffusers' WanTransformer3DModel as a float64 oracle for the Megatron Wan model (see ``diffusers_float64``)."""

import torch
from diffusers import WanTransformer3DModel

from megatron_rcm.models.wan import WanModel, load_diffusers_weights, wan_config
from megatron_rcm.models.wan.diffusers_float64 import DTYPE, float64_exact


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
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=DTYPE)
    x = randn(batch, cfg.in_channels, *latent_shape)
    t = torch.rand(batch, generator=g, dtype=DTYPE) * 1000
    text = randn(batch, text_len, cfg.text_dim)
    out_shape = (batch, cfg.out_channels, *latent_shape)
    return dict(x=x, t=t, text=text, x_t=randn(*x.shape), t_t=randn(batch) * 100, w=randn(*out_shape))


def oracle(model, data):
    """diffusers' forward, JVP (torch.func.jvp) and gradients of sum(w * out), in exact float64."""
    with float64_exact():
        x = data["x"].clone().requires_grad_()
        out = model(x, data["t"], data["text"]).sample
        model.zero_grad()
        (out * data["w"]).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        _, out_t = torch.func.jvp(lambda x_, t_: model(x_, t_, data["text"]).sample,
                                  (data["x"], data["t"]), (data["x_t"], data["t_t"]))
    return dict(out=out.detach(), out_t=out_t.detach(), x_grad=x.grad, grads=grads)


def relative_error(actual, expected):
    return float((actual.detach() - expected).abs().max() / expected.abs().max())
