"""diffusers ``WanTransformer3DModel`` <-> this model: config and weights, sliced for any TP rank.

Only Wan2.1 text-to-video is supported (no image branch). Which diffusers tensor feeds which
parameter, and how it is split over TP ranks, is ``weight_map``'s table.
"""

import glob
import json
import os

import torch
from megatron.core import parallel_state

from .config import WanConfig, config_from_architecture
from .weight_map import wan_parameters

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
    )
    return config_from_architecture(fields, **overrides)


def diffusers_config(config: WanConfig) -> dict:
    """The diffusers ``config.json`` dict of the model ``config`` describes (inverse of ``config_from_diffusers``)."""
    return {
        "_class_name": "WanTransformer3DModel", "patch_size": list(config.patch_size),
        "num_attention_heads": config.num_attention_heads, "attention_head_dim": config.kv_channels,
        "in_channels": config.in_channels, "out_channels": config.out_channels, "text_dim": config.text_dim,
        "freq_dim": config.freq_dim, "ffn_dim": config.ffn_hidden_size, "num_layers": config.num_layers,
        "cross_attn_norm": config.cross_attn_norm, "qk_norm": "rms_norm_across_heads", "eps": config.layernorm_epsilon,
        "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": config.rope_max_seq_len,
    }


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
    table = wan_parameters(config)
    expected = {key for p in table.values() for key in p.sources}
    missing, unknown = sorted(expected - state.keys()), sorted(state.keys() - expected)
    problems = []
    if missing:
        problems.append(f"missing from the diffusers weights: {missing}")
    if unknown:
        problems.append(f"unknown diffusers weights (Wan2.1 T2V has none of these): {unknown}")
    if problems:
        raise KeyError("; ".join(problems))
    wrong = [f"{k}: {tuple(state[k].shape)} != {p.source_shape}" for p in table.values() for k in p.sources
             if tuple(state[k].shape) != p.source_shape]
    if wrong:
        raise ValueError(f"diffusers weights disagree with the config's shapes: {wrong}")
    return {name: p.tp_slice(p.to_global([state[k] for k in p.sources]), config.tensor_model_parallel_size, tp_rank)
            for name, p in table.items()}


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


def diffusers_state_dict(model) -> dict:
    """diffusers ``WanTransformer3DModel`` tensors of a TP=1 ``WanModel`` (the inverse of loading)."""
    if parallel_state.model_parallel_is_initialized() and parallel_state.get_tensor_model_parallel_world_size() > 1:
        raise ValueError("diffusers_state_dict needs a TP=1 model; export a TP>1 model through a distributed "
                         "checkpoint and tools/convert_checkpoint.py --from megatron --to diffusers")
    table = wan_parameters(model.config)
    state = {}
    for name, param in model.named_parameters():
        spec = table[name]
        state.update(spec.from_global(param.detach().reshape(spec.global_shape)))
    return {key: t.contiguous().clone() for key, t in state.items()}


def save_diffusers_folder(model, folder, overwrite=True):
    """Write a TP=1 ``WanModel`` as a diffusers folder (config.json + safetensors), atomically."""
    from safetensors.torch import save_file

    from ...fs import atomic_output_dir

    with atomic_output_dir(folder, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(diffusers_config(model.config), indent=2) + "\n")
        save_file(diffusers_state_dict(model), str(tmp / "diffusion_pytorch_model.safetensors"))

