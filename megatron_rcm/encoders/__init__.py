"""The VAE and text encoder of a diffusers pipeline folder (Wan2.1 text-to-video, Cosmos-Predict2
text-to-image: both use the Wan VAE), encoding as the pipeline does."""

from .folder import (COSMOS_NEGATIVE_PROMPT, PIPELINE_KINDS, WAN_NEGATIVE_PROMPT, PipelineFolderError, PipelineKind,
                     check_pipeline_folder, pipeline_kind)
from .text import TextEncoder, load_text_encoder
from .vae import WanVAE, load_vae, vae_geometry

__all__ = ["COSMOS_NEGATIVE_PROMPT", "PIPELINE_KINDS", "PipelineFolderError", "PipelineKind", "TextEncoder",
           "WAN_NEGATIVE_PROMPT", "WanVAE", "check_pipeline_folder", "load_text_encoder", "load_vae",
           "pipeline_kind", "vae_geometry"]
