"""``convert_checkpoint``: any of diffusers / Wan native / Megatron distributed checkpoint to another.

Every direction reads the source one tensor at a time under diffusers names (``DiffusersTensors``),
checks keys and shapes against the config, and streams into the target written atomically.
"""

import json
from pathlib import Path

from ..save_folder import is_complete, latest_checkpoint_path
from .megatron_dist import megatron_tensors, write_megatron
from .wan_native import diffusers_tensors, native_tensors, write_diffusers, write_native

FORMATS = ("diffusers", "wan", "megatron")
_WRITERS = {"diffusers": write_diffusers, "wan": write_native}


class ConversionRequestError(ValueError):
    """Arguments that ask for no valid conversion."""


def detect_format(path) -> str:
    """The format of the checkpoint at ``path``: a Megatron checkpoint or save folder, a diffusers
    model folder, or Wan's native release (a .safetensors/.pth/.pt file, or a folder of them)."""
    path = Path(path)
    if path.is_file():
        return "wan"
    if not path.is_dir():
        raise ConversionRequestError(f"--input {path} does not exist")
    if is_complete(latest_checkpoint_path(path)):
        return "megatron"
    config = path / "config.json"
    if config.is_file():
        try:
            class_name = json.loads(config.read_text()).get("_class_name", "")
        except (ValueError, AttributeError):
            class_name = ""
        if class_name.endswith("Transformer3DModel"):
            return "diffusers"
    if any(path.glob("*.safetensors")) or any(path.glob("*.pth")) or any(path.glob("*.pt")):
        return "wan"
    raise ConversionRequestError(f"cannot tell the format of {path}; pass --from {'|'.join(FORMATS)}")


def open_checkpoint(fmt, path, megatron_prefix=None):
    """The checkpoint at ``path`` (format ``fmt``) as ``DiffusersTensors``, keys and shapes checked."""
    if fmt == "megatron":
        return megatron_tensors(path, megatron_prefix)
    return diffusers_tensors(path) if fmt == "diffusers" else native_tensors(path)


def convert_checkpoint(source, target, input_path, output_path, tensor_parallel_size=1, dtype=None,
                       overwrite=False, progress=True, megatron_prefix=None):
    """Convert ``input_path`` (format ``source``) into ``output_path`` (format ``target``); returns its config.

    ``tensor_parallel_size`` sets the chunking of a Megatron output (loadable at any TP size);
    ``dtype`` casts floating-point tensors; ``megatron_prefix`` picks one model of a Megatron
    checkpoint that records several (a training run's ``ema.``, for example).
    """
    for fmt in (source, target):
        if fmt not in FORMATS:
            raise ConversionRequestError(f"unknown format {fmt!r}; choose from {FORMATS}")
    if source == target:
        raise ConversionRequestError(f"source and target are both {source}")
    if target != "megatron" and tensor_parallel_size != 1:
        raise ConversionRequestError("--tensor-parallel-size applies only to a megatron output")
    tensors = open_checkpoint(source, input_path, megatron_prefix)
    desc = f"{source} -> {target}"
    if target == "megatron":
        return write_megatron(tensors, output_path, tensor_parallel_size, dtype, overwrite, progress, desc)
    return _WRITERS[target](tensors, output_path, dtype, overwrite, progress, desc)
