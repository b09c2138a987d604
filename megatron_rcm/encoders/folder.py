"""Check that a diffusers Wan pipeline folder has the components a tool needs, before loading any."""

import json
from pathlib import Path

# Each component: the config file, its expected class, and the files that may hold its weights.
_COMPONENTS = {
    "vae": ("config.json", "AutoencoderKLWan", ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")),
    "transformer": ("config.json", "WanTransformer3DModel",
                    ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")),
    "text_encoder": ("config.json", "umt5", ("model*.safetensors", "pytorch_model*.bin")),
    "tokenizer": ("tokenizer_config.json", None, ("tokenizer.json", "spiece.model")),
    "scheduler": ("scheduler_config.json", None, ()),
}


class PipelineFolderError(ValueError):
    """A pipeline folder that lacks a component or file, or holds the wrong kind of model."""


def _config_class(config_path: Path) -> str:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise PipelineFolderError(f"{config_path} is not a readable JSON file ({e})") from None
    return config.get("_class_name") or config.get("model_type")


def check_pipeline_folder(path, components) -> Path:
    """``path`` as a Path if it holds every named component (``vae``, ``text_encoder``,
    ``tokenizer``, ``transformer``, ``scheduler``) with its config and weights; otherwise raises
    ``PipelineFolderError`` with one line naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise PipelineFolderError(f"pipeline folder {path} does not exist: pass a diffusers Wan2.1 folder "
                                  "(e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers) holding vae/, text_encoder/, tokenizer/")
    for name in components:
        if name not in _COMPONENTS:
            raise PipelineFolderError(f"unknown pipeline component {name!r}; known: {sorted(_COMPONENTS)}")
        config_file, expected_class, weight_patterns = _COMPONENTS[name]
        folder = path / name
        if not folder.is_dir() and (path / "config.json").is_file():
            raise PipelineFolderError(f"{path} is the folder of one model ({_config_class(path / 'config.json')}), "
                                      f"not a pipeline: pass the diffusers Wan2.1 folder that holds {name}/")
        if not folder.is_dir():
            raise PipelineFolderError(f"{path} has no {name}/ folder: pass a diffusers Wan2.1 pipeline folder")
        if not (folder / config_file).is_file():
            raise PipelineFolderError(f"{folder} has no {config_file}")
        found_class = _config_class(folder / config_file)
        if expected_class is not None and found_class != expected_class:
            raise PipelineFolderError(f"{folder / config_file} describes {found_class!r}, expected {expected_class!r}")
        if weight_patterns and not any(any(folder.glob(pattern)) for pattern in weight_patterns):
            raise PipelineFolderError(f"{folder} has no weights or vocabulary file (looked for "
                                      f"{', '.join(weight_patterns)})")
    return path
