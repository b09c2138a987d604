"""Every ``WanModel`` parameter: its diffusers source tensor(s), its full (global) shape, its TP split.

This table is the one place that knows how diffusers' ``WanTransformer3DModel`` names map to this
model (``models.weight_map`` says what follows from it). Fused projections: self-attention
``qkv`` ``[3, d, ...]`` = to_q, to_k, to_v; cross-attention ``kv`` ``[2, d, ...]``.
"""

import math

from ..weight_map import ParameterSpec, sharded_state_dict, source_shapes

__all__ = ["diffusers_shapes", "sharded_state_dict", "wan_parameters"]


def wan_parameters(config) -> dict:
    """{parameter name: ParameterSpec} for every parameter of ``WanModel(config)``."""
    d, ffn = config.hidden_size, config.ffn_hidden_size
    patch = tuple(config.patch_size)
    out_features = config.out_channels * math.prod(patch)
    params = []

    def add(name, source, shape, tp_axis=None, global_shape=None):
        params.append(ParameterSpec(name, (source,), tuple(shape), tuple(global_shape or shape), tp_axis))

    def linear(name, source, in_features, out_features, split=None):
        """``split``: "column" (output features over TP), "row" (input features over TP), None."""
        add(f"{name}.weight", f"{source}.weight", (out_features, in_features), {"column": 0, "row": 1}.get(split))
        add(f"{name}.bias", f"{source}.bias", (out_features,), 0 if split == "column" else None)

    def fused(name, prefix, parts):
        for p, shape in (("weight", (d, d)), ("bias", (d,))):
            sources = tuple(f"{prefix}.to_{x}.{p}" for x in parts)
            params.append(ParameterSpec(f"{name}.{p}", sources, shape, (len(parts), *shape), tp_axis=1))

    add("patch_embedding.weight", "patch_embedding.weight", (d, config.in_channels, *patch),
        global_shape=(d, config.in_channels * math.prod(patch)))
    add("patch_embedding.bias", "patch_embedding.bias", (d,))
    for name, in_features, out_dim in (("time_embedder.linear_1", config.freq_dim, d),
                                       ("time_embedder.linear_2", d, d), ("time_proj", d, 6 * d),
                                       ("text_embedder.linear_1", config.text_dim, d),
                                       ("text_embedder.linear_2", d, d)):
        linear(f"condition_embedder.{name}", f"condition_embedder.{name}", in_features, out_dim)
    for i in range(config.num_layers):
        b = f"blocks.{i}."
        fused(b + "attn1.qkv", b + "attn1", "qkv")
        linear(b + "attn2.q", b + "attn2.to_q", d, d, "column")
        fused(b + "attn2.kv", b + "attn2", "kv")
        for attn in ("attn1", "attn2"):
            for norm in ("norm_q", "norm_k"):
                add(f"{b}{attn}.{norm}.weight", f"{b}{attn}.{norm}.weight", (d,), tp_axis=0)
            linear(f"{b}{attn}.proj", f"{b}{attn}.to_out.0", d, d, "row")
        linear(b + "ffn.fc1", b + "ffn.net.0.proj", d, ffn, "column")
        linear(b + "ffn.fc2", b + "ffn.net.2", ffn, d, "row")
        if config.cross_attn_norm:
            add(b + "norm2.weight", b + "norm2.weight", (d,))
            add(b + "norm2.bias", b + "norm2.bias", (d,))
        add(b + "scale_shift_table", b + "scale_shift_table", (1, 6, d))
    add("scale_shift_table", "scale_shift_table", (1, 2, d))
    linear("proj_out", "proj_out", d, out_features)
    return {p.name: p for p in params}


def diffusers_shapes(config) -> dict:
    """{diffusers key: shape} of every parameter of the diffusers model of ``config``."""
    return source_shapes(wan_parameters(config))
