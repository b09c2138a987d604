"""Cosmos-Predict2 text-to-image DiT on megatron-core (TP, SP, CP; forward and exact JVP).

The weight map and the diffusers state-dict conversion are reached through ``FAMILY`` (or their
modules), not through this face."""

from ..family import ModelFamily
from ..weight_map import diffusers_state_dict, load_diffusers_weights, read_diffusers_folder
from .config import CosmosConfig, cosmos_config
from .diffusers_weights import (
    config_from_diffusers,
    convert_diffusers_state_dict,
    diffusers_config,
    diffusers_forward,
    save_diffusers_folder,
)
from .model import CosmosModel
from .weight_map import cosmos_parameters, diffusers_shapes

FAMILY = ModelFamily(
    name="cosmos", config_class=CosmosConfig, model_class=CosmosModel, diffusers_class="CosmosTransformer3DModel",
    config_from_diffusers=config_from_diffusers, diffusers_config=diffusers_config, parameters=cosmos_parameters,
    convert_diffusers_state_dict=convert_diffusers_state_dict, diffusers_forward=diffusers_forward,
)

__all__ = [
    "FAMILY",
    "CosmosConfig",
    "CosmosModel",
    "config_from_diffusers",
    "cosmos_config",
    "diffusers_config",
    "load_diffusers_weights",
    "read_diffusers_folder",
    "save_diffusers_folder",
]
