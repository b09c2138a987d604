"""Wan2.1 text-to-video DiT on megatron-core (TP, SP, CP; forward and exact JVP)."""

from .config import PRESETS, WanConfig, wan_config
from .diffusers_weights import (
    config_from_diffusers,
    convert_diffusers_state_dict,
    load_diffusers_weights,
    read_diffusers_folder,
)
from .model import WanModel

__all__ = [
    "PRESETS",
    "WanConfig",
    "WanModel",
    "config_from_diffusers",
    "convert_diffusers_state_dict",
    "load_diffusers_weights",
    "read_diffusers_folder",
    "wan_config",
]
