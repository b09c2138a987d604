"""Wan2.1 text-to-video DiT on megatron-core (TP, SP, CP; forward and exact JVP).

The weight map and the diffusers state-dict conversion are reached through ``FAMILY`` (or their
modules), not through this face."""

from ..family import ModelFamily
from .config import PRESETS, WanConfig, wan_config
from .diffusers_weights import (
    config_from_diffusers,
    convert_diffusers_state_dict,
    diffusers_config,
    load_diffusers_weights,
    read_diffusers_folder,
    save_diffusers_folder,
)
from .model import WanModel
from .weight_map import wan_parameters

FAMILY = ModelFamily(
    name="wan", config_class=WanConfig, model_class=WanModel, diffusers_class="WanTransformer3DModel",
    config_from_diffusers=config_from_diffusers, diffusers_config=diffusers_config, parameters=wan_parameters,
    convert_diffusers_state_dict=convert_diffusers_state_dict,
    diffusers_forward=lambda model, x, t, text: model(x, t, text).sample,
)

__all__ = [
    "FAMILY",
    "PRESETS",
    "WanConfig",
    "WanModel",
    "config_from_diffusers",
    "diffusers_config",
    "load_diffusers_weights",
    "read_diffusers_folder",
    "save_diffusers_folder",
    "wan_config",
]
