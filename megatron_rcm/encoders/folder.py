"""Which kind of diffusers pipeline folder a path holds, and whether it has the components a tool needs."""

import json
from dataclasses import dataclass
from pathlib import Path

_MODEL_WEIGHTS = ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")
_TEXT_WEIGHTS = ("model*.safetensors", "pytorch_model*.bin")
# Cosmos2TextToImagePipeline's DEFAULT_NEGATIVE_PROMPT (diffusers.pipelines.cosmos), used when no negative prompt is given
COSMOS_NEGATIVE_PROMPT = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, "
    "jerky movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, "
    "fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. "
    "Overall, the video is of poor quality.")
# Wan2.1's default negative prompt (sample_neg_prompt in its wan/configs/shared_config.py).
WAN_NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                       "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
                       "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


@dataclass(frozen=True)
class PipelineKind:
    """What the tools use of one diffusers pipeline class: its components and its defaults."""

    pipeline_class: str
    """``model_index.json``'s ``_class_name``."""

    transformer_class: str
    """The diffusers transformer class of its ``transformer/`` (which model family samples with it)."""

    text_encoder_type: str
    """``text_encoder/config.json``'s ``model_type``."""

    text_encoder_class: str
    """The transformers class that loads ``text_encoder/``."""

    clean_prompts: bool
    """Whether the pipeline cleans prompts (ftfy, HTML unescaping, whitespace) before tokenising them."""

    image: bool
    """Whether it makes images (one latent frame, written as PNG) rather than videos."""

    num_frames: int
    """The pipeline's default frame count (1 for an image pipeline)."""

    height: int
    """The pipeline's default height in pixels."""

    width: int
    """The pipeline's default width in pixels."""

    guidance_scale: float
    """The pipeline's default classifier-free guidance scale."""

    pipeline_negative_prompt: str
    """The negative prompt the pipeline's own call uses when given none."""

    negative_prompt: str
    """The family's default negative prompt for training data (the teacher's guidance during distillation)."""


PIPELINE_KINDS = {k.pipeline_class: k for k in (
    PipelineKind("WanPipeline", "WanTransformer3DModel", "umt5", "UMT5EncoderModel", clean_prompts=True, image=False,
                 num_frames=81, height=480, width=832, guidance_scale=5.0, pipeline_negative_prompt="",
                 negative_prompt=WAN_NEGATIVE_PROMPT),
    PipelineKind("Cosmos2TextToImagePipeline", "CosmosTransformer3DModel", "t5", "T5EncoderModel",
                 clean_prompts=False, image=True, num_frames=1, height=768, width=1360, guidance_scale=7.0,
                 pipeline_negative_prompt=COSMOS_NEGATIVE_PROMPT, negative_prompt=COSMOS_NEGATIVE_PROMPT),
)}
_SUPPORTED = " or ".join(PIPELINE_KINDS)
COMPONENTS = ("vae", "transformer", "text_encoder", "tokenizer", "scheduler")


class PipelineFolderError(ValueError):
    """A pipeline folder that lacks a component or file, or holds the wrong kind of model."""


def _config_class(config_path: Path) -> str:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise PipelineFolderError(f"{config_path} is not a readable JSON file ({e})") from None
    return config.get("_class_name") or config.get("model_type")


def _components(kind: PipelineKind) -> dict:
    """Each component: the config file, its expected class, and the files that may hold its weights."""
    return {"vae": ("config.json", "AutoencoderKLWan", _MODEL_WEIGHTS),
            "transformer": ("config.json", kind.transformer_class, _MODEL_WEIGHTS),
            "text_encoder": ("config.json", kind.text_encoder_type, _TEXT_WEIGHTS),
            "tokenizer": ("tokenizer_config.json", None, ("tokenizer.json", "spiece.model")),
            "scheduler": ("scheduler_config.json", None, ())}


def pipeline_kind(path) -> PipelineKind:
    """The kind of the diffusers pipeline folder ``path``: from its ``model_index.json``, else from
    the model type of its ``text_encoder/``. Raises ``PipelineFolderError`` (one line) otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise PipelineFolderError(f"pipeline folder {path} does not exist: pass a diffusers {_SUPPORTED} folder "
                                  "(e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers) holding vae/, text_encoder/, tokenizer/")
    if (path / "model_index.json").is_file():
        name = _config_class(path / "model_index.json")
        if name not in PIPELINE_KINDS:
            raise PipelineFolderError(f"{path / 'model_index.json'} describes {name!r}; supported: {_SUPPORTED}")
        return PIPELINE_KINDS[name]
    if (path / "config.json").is_file():
        raise PipelineFolderError(f"{path} is the folder of one model ({_config_class(path / 'config.json')}), "
                                  f"not a pipeline: pass the diffusers {_SUPPORTED} folder that holds it")
    if (path / "text_encoder" / "config.json").is_file():
        model_type = _config_class(path / "text_encoder" / "config.json")
        for kind in PIPELINE_KINDS.values():
            if kind.text_encoder_type == model_type:
                return kind
    raise PipelineFolderError(f"{path} has no model_index.json (nor a text_encoder/ of a known kind): pass a "
                              f"diffusers {_SUPPORTED} folder holding vae/, text_encoder/, tokenizer/")


def check_pipeline_folder(path, components) -> Path:
    """``path`` as a Path if it holds every named component (``vae``, ``text_encoder``,
    ``tokenizer``, ``transformer``, ``scheduler``) with its config and weights, as its kind of
    pipeline has them; otherwise raises ``PipelineFolderError`` with one line naming what is missing."""
    path = Path(path)
    if path.is_dir() and not (path / "model_index.json").is_file() and not (path / "config.json").is_file():
        for name in components:  # a folder of unknown kind: name what it lacks first
            if name in COMPONENTS and not (path / name).is_dir():
                raise PipelineFolderError(f"{path} has no {name}/ folder: pass a diffusers {_SUPPORTED} folder")
    kind = pipeline_kind(path)
    table = _components(kind)
    for name in components:
        if name not in table:
            raise PipelineFolderError(f"unknown pipeline component {name!r}; known: {sorted(table)}")
        config_file, expected_class, weight_patterns = table[name]
        folder = path / name
        if not folder.is_dir():
            raise PipelineFolderError(f"{path} has no {name}/ folder: pass a diffusers {kind.pipeline_class} folder")
        if not (folder / config_file).is_file():
            raise PipelineFolderError(f"{folder} has no {config_file}")
        found_class = _config_class(folder / config_file)
        if expected_class is not None and found_class != expected_class:
            raise PipelineFolderError(f"{folder / config_file} describes {found_class!r}, expected {expected_class!r} "
                                      f"(the {name} of a {kind.pipeline_class})")
        if weight_patterns and not any(any(folder.glob(pattern)) for pattern in weight_patterns):
            raise PipelineFolderError(f"{folder} has no weights or vocabulary file (looked for "
                                      f"{', '.join(weight_patterns)})")
    return path
