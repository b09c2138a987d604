"""Every ``CosmosModel`` parameter: its diffusers source tensor(s), its full (global) shape, its TP split.

This table is the one place that knows how diffusers' ``CosmosTransformer3DModel`` names map to
this model (``models.weight_map`` says what follows from it). Fused projections: self-attention
``qkv`` ``[3, d, d]`` = to_q, to_k, to_v; cross-attention ``kv`` ``[2, d, text_dim]`` = to_k, to_v.
No Cosmos-Predict2 linear has a bias.
"""

import math

from ..weight_map import ParameterSpec, source_shapes


def cosmos_parameters(config) -> dict:
    """{parameter name: ParameterSpec} for every parameter of ``CosmosModel(config)``."""
    d, ffn, lora, hd = config.hidden_size, config.ffn_hidden_size, config.adaln_lora_dim, config.head_dim
    patch_volume = math.prod(config.patch_size)
    in_channels = config.in_channels + int(config.concat_padding_mask)
    params = []

    def add(name, source, shape, tp_axis=None):
        params.append(ParameterSpec(name, (source,), tuple(shape), tuple(shape), tp_axis))

    def linear(name, source, in_features, out_features, split=None):
        """``split``: "column" (output features over TP), "row" (input features over TP), None."""
        add(f"{name}.weight", f"{source}.weight", (out_features, in_features), {"column": 0, "row": 1}.get(split))

    def fused(name, prefix, parts, in_features):
        sources = tuple(f"{prefix}.to_{x}.weight" for x in parts)
        params.append(ParameterSpec(f"{name}.weight", sources, (d, in_features), (len(parts), d, in_features), 1))

    def modulation(name, source, parts):
        linear(f"{name}.linear_1", f"{source}.linear_1", d, lora)
        linear(f"{name}.linear_2", f"{source}.linear_2", lora, parts * d)

    linear("patch_embedding", "patch_embed.proj", in_channels * patch_volume, d)
    linear("time_embedder.linear_1", "time_embed.t_embedder.linear_1", d, d)
    linear("time_embedder.linear_2", "time_embed.t_embedder.linear_2", d, 3 * d)
    add("time_embedder.norm_weight", "time_embed.norm.weight", (d,))
    for i in range(config.num_layers):
        b, src = f"blocks.{i}.", f"transformer_blocks.{i}."
        for norm in ("norm1", "norm2", "norm3"):
            modulation(b + norm, src + norm, 3)
        fused(b + "attn1.qkv", src + "attn1", "qkv", d)
        linear(b + "attn2.q", src + "attn2.to_q", d, d, "column")
        fused(b + "attn2.kv", src + "attn2", "kv", config.text_dim)
        for attn in ("attn1", "attn2"):
            for ours, theirs in (("q_layernorm", "norm_q"), ("k_layernorm", "norm_k")):
                add(f"{b}{attn}.{ours}.weight", f"{src}{attn}.{theirs}.weight", (hd,))
            linear(f"{b}{attn}.proj", f"{src}{attn}.to_out.0", d, d, "row")
        linear(b + "ff.fc1", src + "ff.net.0.proj", d, ffn, "column")
        linear(b + "ff.fc2", src + "ff.net.2", ffn, d, "row")
    modulation("norm_out", "norm_out", 2)
    linear("proj_out", "proj_out", d, config.out_channels * patch_volume)
    return {p.name: p for p in params}


def diffusers_shapes(config) -> dict:
    """{diffusers key: shape} of every parameter of the diffusers model of ``config``."""
    return source_shapes(cosmos_parameters(config))
