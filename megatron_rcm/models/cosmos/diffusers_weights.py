"""diffusers ``CosmosTransformer3DModel`` (Cosmos-Predict2 text-to-image) <-> this model: config, weights, calls."""

import contextlib
import enum
import types

import torch

from .. import weight_map
from .config import CosmosConfig
from .weight_map import cosmos_parameters

# diffusers config entries outside Cosmos-Predict2 text-to-image, with the value Predict2 has
_PREDICT2_ONLY = {"extra_pos_embed_type": None, "use_crossattn_projection": False, "controlnet_block_every_n": None,
                  "img_context_dim_in": None}


def config_from_diffusers(cfg: dict, **overrides) -> CosmosConfig:
    """A ``CosmosConfig`` from a diffusers ``config.json`` dict; ``overrides`` set parallel sizes, dtype, etc."""
    weight_map.refuse_unsupported(cfg, _PREDICT2_ONLY, "Cosmos-Predict2 text-to-image")
    heads, head_dim = cfg.get("num_attention_heads", 32), cfg.get("attention_head_dim", 128)
    hidden = heads * head_dim
    fields = dict(
        num_layers=cfg.get("num_layers", 28), hidden_size=hidden, num_attention_heads=heads, kv_channels=head_dim,
        ffn_hidden_size=int(hidden * cfg.get("mlp_ratio", 4.0)), in_channels=cfg.get("in_channels", 16),
        out_channels=cfg.get("out_channels", 16), patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
        text_dim=cfg.get("text_embed_dim", 1024), adaln_lora_dim=cfg.get("adaln_lora_dim", 256),
        rope_scale=tuple(cfg.get("rope_scale", (2.0, 1.0, 1.0))), max_size=tuple(cfg.get("max_size", (128, 240, 240))),
        concat_padding_mask=cfg.get("concat_padding_mask", True), layernorm_epsilon=1e-6, qk_layernorm_epsilon=1e-5,
    )
    return CosmosConfig.from_architecture(fields, **overrides)


def diffusers_config(config: CosmosConfig) -> dict:
    """The diffusers ``config.json`` dict of the model ``config`` describes (inverse of ``config_from_diffusers``)."""
    if (config.layernorm_epsilon, config.qk_layernorm_epsilon) != (1e-6, 1e-5):
        raise ValueError("diffusers' Cosmos model has fixed eps (1e-6 adaLN/timestep, 1e-5 q/k norms); "
                         f"this config has {config.layernorm_epsilon}, {config.qk_layernorm_epsilon}")
    mlp_ratio = config.ffn_hidden_size / config.hidden_size
    if int(config.hidden_size * mlp_ratio) != config.ffn_hidden_size:
        raise ValueError(f"ffn_hidden_size {config.ffn_hidden_size} is not int(hidden_size x mlp_ratio) for any "
                         f"float mlp_ratio (diffusers' FeedForward width)")
    return {
        "_class_name": "CosmosTransformer3DModel", "in_channels": config.in_channels,
        "out_channels": config.out_channels, "num_attention_heads": config.num_attention_heads,
        "attention_head_dim": config.kv_channels, "num_layers": config.num_layers,
        "mlp_ratio": mlp_ratio, "text_embed_dim": config.text_dim,
        "adaln_lora_dim": config.adaln_lora_dim, "max_size": list(config.max_size),
        "patch_size": list(config.patch_size), "rope_scale": list(config.rope_scale),
        "concat_padding_mask": config.concat_padding_mask, **_PREDICT2_ONLY,
    }


def convert_diffusers_state_dict(state, config: CosmosConfig, tp_rank: int = 0) -> dict:
    """This TP rank's state dict of ``CosmosModel`` from a diffusers state dict; lists missing/unknown keys."""
    return weight_map.convert_state_dict(state, cosmos_parameters(config), config.tensor_model_parallel_size,
                                         tp_rank, "Cosmos-Predict2 text-to-image")


def save_diffusers_folder(model, folder, overwrite=True):
    """Write a TP=1 ``CosmosModel`` as a diffusers folder (config.json + safetensors), atomically."""
    weight_map.save_diffusers_folder(model, folder, diffusers_config(model.config), overwrite)


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"


def _resize(image, size, interpolation=_InterpolationMode.NEAREST):
    return torch.nn.functional.interpolate(image, size=size, mode=interpolation.value)


@contextlib.contextmanager
def nearest_resize():
    """diffusers resizes the padding mask with torchvision, which a CPU-only install may lack: there
    supply torchvision's nearest-neighbour tensor resize (``interpolate(mode="nearest")``)."""
    from diffusers.models.transformers import transformer_cosmos

    if hasattr(transformer_cosmos, "transforms"):
        yield
        return
    transformer_cosmos.transforms = types.SimpleNamespace(functional=types.SimpleNamespace(resize=_resize),
                                                          InterpolationMode=_InterpolationMode)
    try:
        yield
    finally:
        del transformer_cosmos.transforms


def diffusers_forward(model, x, t, text, padding_mask=None):
    """diffusers' ``CosmosTransformer3DModel`` output as ``Cosmos2TextToImagePipeline`` calls it: with an
    all-zero padding mask unless one is given."""
    if padding_mask is None and model.config.concat_padding_mask:
        padding_mask = x.new_zeros(1, 1, *x.shape[-2:])
    with nearest_resize():
        return model(x, t, text, padding_mask=padding_mask).sample
