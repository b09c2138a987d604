"""Cosmos-Predict2 text-to-image DiT on megatron-core (TP, SP, CP; forward and exact JVP)."""

from ..weight_map import diffusers_state_dict, load_diffusers_weights, read_diffusers_folder
from .config import CosmosConfig, cosmos_config
from .diffusers_weights import config_from_diffusers, convert_diffusers_state_dict, diffusers_config, save_diffusers_folder
from .model import CosmosModel
from .weight_map import cosmos_parameters, diffusers_shapes

__all__ = [
    "CosmosConfig",
    "CosmosModel",
    "config_from_diffusers",
    "convert_diffusers_state_dict",
    "cosmos_config",
    "cosmos_parameters",
    "diffusers_config",
    "diffusers_shapes",
    "diffusers_state_dict",
    "load_diffusers_weights",
    "read_diffusers_folder",
    "save_diffusers_folder",
]
