"""diffusers ``WanTransformer3DModel`` <-> this model: config and weights, sliced for any TP rank.

Only Wan2.1 text-to-video is supported (no image branch). Names follow diffusers except where
layers are fused or parallel: self-attention Q/K/V -> ``attn1.qkv`` (per TP rank [q, k, v] of
the rank's heads), cross-attention K/V -> ``attn2.kv``, ``to_out.0`` -> ``proj``, the FFN's
``net.0.proj`` / ``net.2`` -> ``fc1`` / ``fc2``, the Conv3d patch embedding -> a linear layer over
flattened patches.
"""

import glob
import json
import os

import torch

from .config import WanConfig

_T2V_ONLY = {"image_dim": None, "added_kv_proj_dim": None, "pos_embed_seq_len": None,
             "qk_norm": "rms_norm_across_heads"}


def config_from_diffusers(cfg: dict, **overrides) -> WanConfig:
    """A ``WanConfig`` from a diffusers ``config.json`` dict; ``overrides`` set parallel sizes, dtype, etc."""
    for key, supported in _T2V_ONLY.items():
        if cfg.get(key, supported) != supported:
            raise ValueError(f"diffusers config has {key}={cfg[key]!r}; only Wan2.1 text-to-video "
                             f"({key}={supported!r}) is supported")
    heads, head_dim = cfg.get("num_attention_heads", 40), cfg.get("attention_head_dim", 128)
    fields = dict(
        num_layers=cfg.get("num_layers", 40), hidden_size=heads * head_dim, num_attention_heads=heads,
        kv_channels=head_dim, ffn_hidden_size=cfg.get("ffn_dim", 13824), in_channels=cfg.get("in_channels", 16),
        out_channels=cfg.get("out_channels") or cfg.get("in_channels", 16),
        patch_size=tuple(cfg.get("patch_size", (1, 2, 2))), text_dim=cfg.get("text_dim", 4096),
        freq_dim=cfg.get("freq_dim", 256), cross_attn_norm=cfg.get("cross_attn_norm", True),
        layernorm_epsilon=cfg.get("eps", 1e-6), rope_max_seq_len=cfg.get("rope_max_seq_len", 1024),
        use_cpu_initialization=not torch.cuda.is_available(),
    )
    return WanConfig(**{**fields, **overrides})


def read_diffusers_folder(path):
    """(config dict, state dict) of a diffusers transformer folder (or a pipeline folder's transformer/)."""
    if os.path.isfile(os.path.join(path, "transformer", "config.json")):
        path = os.path.join(path, "transformer")
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    from safetensors.torch import load_file

    state = {}
    for file in files:
        state.update(load_file(file))
    return cfg, state


def convert_diffusers_state_dict(state, config: WanConfig, tp_rank: int = 0) -> dict:
    """This TP rank's state dict of ``WanModel`` from a diffusers state dict; lists missing/unknown keys."""
    tp = config.tensor_model_parallel_size
    remaining, missing, out = dict(state), [], {}

    def take(key):
        if key not in remaining:
            missing.append(key)
            return None
        return remaining.pop(key)

    def rows(key):
        w = take(key)
        return None if w is None else w.chunk(tp, dim=0)[tp_rank]

    def cols(key):
        w = take(key)
        return None if w is None else w.chunk(tp, dim=1)[tp_rank]

    def fused(*keys):
        parts = [rows(k) for k in keys]
        return None if any(p is None for p in parts) else torch.cat(parts, dim=0)

    patch = take("patch_embedding.weight")
    out["patch_embedding.weight"] = None if patch is None else patch.flatten(1)
    replicated = ["patch_embedding.bias", "scale_shift_table", "proj_out.weight", "proj_out.bias"]
    for name in ("time_embedder.linear_1", "time_embedder.linear_2", "time_proj",
                 "text_embedder.linear_1", "text_embedder.linear_2"):
        replicated += [f"condition_embedder.{name}.weight", f"condition_embedder.{name}.bias"]
    for i in range(config.num_layers):
        d, o = f"blocks.{i}.", f"blocks.{i}."
        replicated.append(d + "scale_shift_table")
        if config.cross_attn_norm:
            replicated += [d + "norm2.weight", d + "norm2.bias"]
        for p in ("weight", "bias"):
            out[o + f"attn1.qkv.{p}"] = fused(*(d + f"attn1.to_{x}.{p}" for x in "qkv"))
            out[o + f"attn2.q.{p}"] = rows(d + f"attn2.to_q.{p}")
            out[o + f"attn2.kv.{p}"] = fused(d + f"attn2.to_k.{p}", d + f"attn2.to_v.{p}")
            out[o + f"ffn.fc1.{p}"] = rows(d + f"ffn.net.0.proj.{p}")
        for a in ("attn1", "attn2"):
            for n in ("norm_q", "norm_k"):
                out[o + f"{a}.{n}.weight"] = rows(d + f"{a}.{n}.weight")
            out[o + f"{a}.proj.weight"] = cols(d + f"{a}.to_out.0.weight")
            out[o + f"{a}.proj.bias"] = take(d + f"{a}.to_out.0.bias")
        out[o + "ffn.fc2.weight"] = cols(d + "ffn.net.2.weight")
        out[o + "ffn.fc2.bias"] = take(d + "ffn.net.2.bias")
    for key in replicated:
        out[key] = take(key)
    problems = []
    if missing:
        problems.append(f"missing from the diffusers weights: {missing}")
    if remaining:
        problems.append(f"unknown diffusers weights (Wan2.1 T2V has none of these): {sorted(remaining)}")
    if problems:
        raise KeyError("; ".join(problems))
    return out


def load_diffusers_weights(model, source):
    """Copy diffusers weights into ``model`` (this rank's TP slice).

    ``source``: a ``WanTransformer3DModel``, its state dict, or a diffusers folder.
    """
    from megatron.core import parallel_state

    if isinstance(source, (str, os.PathLike)):
        _, state = read_diffusers_folder(source)
    elif isinstance(source, torch.nn.Module):
        state = source.state_dict()
    else:
        state = source
    tp_rank = parallel_state.get_tensor_model_parallel_rank() if parallel_state.model_parallel_is_initialized() else 0
    converted = convert_diffusers_state_dict(state, model.config, tp_rank)
    result = model.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise KeyError(f"model keys without a diffusers weight: {result.missing_keys}; "
                       f"converted keys the model lacks: {result.unexpected_keys}")
    return model
