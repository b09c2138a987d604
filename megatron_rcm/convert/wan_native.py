"""Wan2.1 T2V checkpoints: Wan's native release layout <-> a diffusers ``WanTransformer3DModel`` folder.

Both directions stream tensor by tensor (bounded host memory), check every key against the
mapping tables of ``wan_keys`` and every shape against the config, and write the output folder
atomically. Native checkpoints come as a folder (``config.json`` + safetensors, as released), a
single ``.safetensors``, or a ``.pt``/``.pth`` state dict (as the rCM reference exports students;
a common prefix such as ``net.`` or ``_orig_mod.`` is stripped).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..atomic_output import atomic_output_dir
from ..models import family_of_diffusers_config
from ..models.weight_map import source_shapes
from . import wan_keys
from .tensor_files import CheckpointFileError, TensorInfo, TensorReader, read_json, write_safetensors_shards

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
_STRIPPABLE_PREFIXES = ("_orig_mod.", "module.", "net.", "model.")


class ConfigMismatchError(ValueError):
    """Tensor shapes that disagree with the model config."""


def native_config_to_diffusers(native: dict) -> dict:
    dim, heads = native["dim"], native["num_heads"]
    if dim % heads:
        raise ConfigMismatchError(f"native config: dim {dim} is not divisible by num_heads {heads}")
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(native.get("patch_size", (1, 2, 2))),
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "in_channels": native["in_dim"],
        "out_channels": native["out_dim"],
        "text_dim": native.get("text_dim", 4096),
        "freq_dim": native["freq_dim"],
        "ffn_dim": native["ffn_dim"],
        "num_layers": native["num_layers"],
        "cross_attn_norm": native.get("cross_attn_norm", True),
        "qk_norm": "rms_norm_across_heads",
        "eps": native["eps"],
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
    }


def diffusers_config_to_native(cfg: dict) -> dict:
    if cfg.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise ConfigMismatchError(f"Wan's native format holds Wan2.1 models only, not a {cfg['_class_name']}")
    if cfg.get("image_dim") or cfg.get("added_kv_proj_dim"):
        raise ConfigMismatchError("only Wan2.1 text-to-video models convert (this config has an image branch)")
    return {
        "_class_name": "WanModel",
        "model_type": "t2v",
        "patch_size": list(cfg["patch_size"]),
        "dim": cfg["num_attention_heads"] * cfg["attention_head_dim"],
        "num_heads": cfg["num_attention_heads"],
        "in_dim": cfg["in_channels"],
        "out_dim": cfg["out_channels"],
        "text_dim": cfg["text_dim"],
        "freq_dim": cfg["freq_dim"],
        "ffn_dim": cfg["ffn_dim"],
        "num_layers": cfg["num_layers"],
        "cross_attn_norm": cfg["cross_attn_norm"],
        "eps": cfg["eps"],
        "text_len": 512,
    }


def expected_diffusers_shapes(cfg: dict) -> dict:
    """Every parameter of the diffusers transformer of a model family and its shape, from the config alone."""
    try:
        family = family_of_diffusers_config(cfg)
        config = family.config_from_diffusers(cfg, use_cpu_initialization=True)
    except ValueError as e:
        raise ConfigMismatchError(f"unsupported diffusers config: {e}") from e
    return source_shapes(family.parameters(config))


def check_keys_and_shapes(infos: dict, expected: dict, source: str):
    """Raise listing missing/unexpected keys and shape disagreements (diffusers names)."""
    missing = sorted(set(expected) - set(infos))
    unexpected = sorted(set(infos) - set(expected))
    if missing or unexpected:
        raise CheckpointFileError(f"{source}: missing keys {missing}; unexpected keys {unexpected}")
    wrong = [f"{k}: {infos[k].shape} != {tuple(expected[k])}" for k in expected if infos[k].shape != tuple(expected[k])]
    if wrong:
        raise ConfigMismatchError(f"{source}: shapes disagree with the config: {wrong}")


def _strip_prefix(keys):
    for prefix in _STRIPPABLE_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def read_native(path):
    """(reader, {diffusers key: stored key}, native config) for a native checkpoint file or folder."""
    path = Path(path)
    reader = TensorReader(path)
    prefix = _strip_prefix(reader.keys())
    names = {k[len(prefix):]: k for k in reader.keys()}
    source = {d: names[n] for n, d in _native_names(names, path).items()}
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    if config_file.exists():
        config = read_json(config_file)
    else:
        config = infer_native_config(names, reader)
    return reader, source, config


def _native_names(names, path):
    """``wan_keys.native_to_diffusers(names)``; a checkpoint in diffusers names is told to say so."""
    try:
        return wan_keys.native_to_diffusers(names)
    except wan_keys.UnknownKeyError:
        if not wan_keys.are_diffusers_names(names):
            raise
    raise CheckpointFileError(f"{path} holds diffusers parameter names, not Wan's native ones: it looks like a "
                              "diffusers checkpoint; pass --from diffusers with its folder")


def infer_native_config(names, reader, head_dim=128):
    """Native config from tensor shapes; the head count assumes Wan's head dim of 128."""
    shape = lambda k: reader.info(names[k]).shape
    dim, in_dim = shape("patch_embedding.weight")[:2]
    if dim % head_dim:
        raise CheckpointFileError(
            f"no config.json beside the checkpoint and dim {dim} is not a multiple of {head_dim}: "
            "put Wan's config.json (dim, num_heads, ...) next to it"
        )
    patch = tuple(shape("patch_embedding.weight")[2:])
    blocks = {int(k.split(".")[1]) for k in names if k.startswith("blocks.")}
    return {
        "dim": dim, "num_heads": dim // head_dim, "in_dim": in_dim, "patch_size": patch,
        "out_dim": shape("head.head.weight")[0] // (patch[0] * patch[1] * patch[2]),
        "text_dim": shape("text_embedding.0.weight")[1], "freq_dim": shape("time_embedding.0.weight")[1],
        "ffn_dim": shape("blocks.0.ffn.0.weight")[0], "num_layers": len(blocks),
        "cross_attn_norm": "blocks.0.norm3.weight" in names, "eps": 1e-6,
    }


@dataclass(frozen=True)
class DiffusersTensors:
    """A Wan2.1 T2V checkpoint seen under diffusers names: its diffusers ``config.json`` dict, every
    tensor's shape and dtype, and ``get(key)`` reading one tensor when it is needed."""

    config: dict
    infos: dict
    get: Callable


def native_tensors(path) -> DiffusersTensors:
    """A Wan native checkpoint file or folder under diffusers names, keys and shapes checked."""
    reader, source, native_cfg = read_native(path)
    try:
        cfg = native_config_to_diffusers(native_cfg)
    except KeyError as e:
        raise CheckpointFileError(f"{path}: Wan's native config.json has no {e} (it needs dim, num_heads, in_dim, "
                                  "out_dim, freq_dim, ffn_dim, num_layers, eps)") from None
    infos = {d: reader.info(k) for d, k in source.items()}
    check_keys_and_shapes(infos, expected_diffusers_shapes(cfg), str(path))
    return DiffusersTensors(cfg, infos, lambda key: reader.get(source[key]))


def diffusers_tensors(path) -> DiffusersTensors:
    """A diffusers model folder, keys and shapes checked."""
    path = Path(path)
    if path.is_file():
        raise CheckpointFileError(f"{path} is a file: a diffusers model is the folder holding config.json and the "
                                  f"weights ({path.parent})")
    if not (path / "config.json").exists():
        raise CheckpointFileError(f"{path}: not a diffusers model folder (no config.json)")
    cfg = read_json(path / "config.json")
    reader = TensorReader(path)
    infos = {k: reader.info(k) for k in reader.keys()}
    check_keys_and_shapes(infos, expected_diffusers_shapes(cfg), str(path))
    return DiffusersTensors(cfg, infos, reader.get)


def cast_to(tensor, dtype):
    """``tensor`` in ``dtype`` if it is floating point and a dtype is given."""
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def _cast_info(info, dtype):
    return TensorInfo(info.shape, dtype if dtype is not None and info.dtype.is_floating_point else info.dtype)


def _write_folder(tensors, names, cfg, output_path, dtype, overwrite, progress, desc):
    """Stream ``tensors`` into a safetensors folder under ``names`` ({diffusers key: output key}), ``cfg`` as config.json."""
    infos = {names[k]: _cast_info(info, dtype) for k, info in tensors.infos.items()}
    source = {out: k for k, out in names.items()}
    with atomic_output_dir(output_path, overwrite=overwrite) as tmp, \
            tqdm(total=len(infos), desc=desc, disable=not progress, unit="tensor") as bar:

        def produce(key):
            bar.update()
            return cast_to(tensors.get(source[key]), dtype)

        write_safetensors_shards(tmp, DIFFUSERS_WEIGHTS, infos, produce)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))


def write_diffusers(tensors: DiffusersTensors, output_path, dtype=None, overwrite=False, progress=True, desc=None):
    """A diffusers model folder (config.json + safetensors) that ``WanTransformer3DModel.from_pretrained`` loads."""
    _write_folder(tensors, {k: k for k in tensors.infos}, tensors.config, output_path, dtype, overwrite, progress,
                  desc or "-> diffusers")
    return tensors.config


def write_native(tensors: DiffusersTensors, output_path, dtype=None, overwrite=False, progress=True, desc=None):
    """A Wan native folder (config.json + safetensors in the official repository's key names)."""
    native_cfg = diffusers_config_to_native(tensors.config)
    _write_folder(tensors, wan_keys.diffusers_to_native(tensors.infos), native_cfg, output_path, dtype, overwrite,
                  progress, desc or "-> wan")
    return native_cfg


def convert_native_to_diffusers(input_path, output_path, dtype=None, overwrite=False, progress=True):
    """Wan native checkpoint -> diffusers folder (config.json + safetensors). Returns the diffusers config."""
    return write_diffusers(native_tensors(input_path), output_path, dtype, overwrite, progress, "wan -> diffusers")


def convert_diffusers_to_native(input_path, output_path, dtype=None, overwrite=False, progress=True):
    """diffusers folder -> Wan native folder (config.json + safetensors). Returns the native config."""
    return write_native(diffusers_tensors(input_path), output_path, dtype, overwrite, progress, "diffusers -> wan")
