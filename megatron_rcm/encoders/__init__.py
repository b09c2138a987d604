"""The Wan2.1 VAE and UMT5 text encoder, loaded from a diffusers pipeline folder, encoding as WanPipeline does."""

from .folder import PipelineFolderError, check_pipeline_folder
from .text import WAN_NEGATIVE_PROMPT, WanTextEncoder, load_text_encoder
from .vae import WanVAE, load_vae, vae_geometry

__all__ = ["PipelineFolderError", "WAN_NEGATIVE_PROMPT", "WanTextEncoder", "WanVAE", "check_pipeline_folder",
           "load_text_encoder", "load_vae", "vae_geometry"]
