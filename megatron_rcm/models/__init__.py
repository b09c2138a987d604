"""Video diffusion transformers on megatron-core, one folder per family, with an exact JVP path."""

from .wan import WanConfig, WanModel, load_diffusers_weights, wan_config

__all__ = ["WanConfig", "WanModel", "load_diffusers_weights", "wan_config"]
