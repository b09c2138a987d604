"""A complete, tiny diffusers Cosmos-Predict2 text-to-image pipeline folder built from real classes.

``build_tiny_cosmos_pipeline(folder)`` writes what ``Cosmos2TextToImagePipeline.save_pretrained``
writes: the tiny Wan VAE of ``tests/wan_pipeline.py`` (latent std of powers of two, so that the
pipeline's float32 reciprocal of it is exact), a tiny ``T5EncoderModel`` with a real sentencepiece
``T5TokenizerFast``, the ``FlowMatchEulerDiscreteScheduler`` with Karras sigmas that the Cosmos
folders hold, and a ``CosmosTransformer3DModel`` of the project's ``cosmos-tiny-a`` shape. No
safety checker is saved (the guardrail package is not installed); ``NoSafetyCheck`` stands in
for it where the pipeline is built.
"""

import functools
from pathlib import Path

import torch

from tests.wan_pipeline import TINY_UMT5, TINY_VAE, cached_build, perturbed, save_tiny_pipeline, tiny_vae

TINY_T5 = TINY_UMT5  # the same tiny shape; T5Config takes these arguments
LATENTS_STD = (0.5, 2.0, 0.25, 1.0)
PRESET = "cosmos-tiny-a"


class NoSafetyCheck:
    """The pipeline insists on a safety checker; without prompts it only moves it."""

    def to(self, *args, **kwargs):
        return self


def build_tiny_cosmos_pipeline(folder, seed=0) -> Path:
    from diffusers import Cosmos2TextToImagePipeline, CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    from megatron_rcm.models.cosmos import cosmos_config, diffusers_config

    def pipeline(tokenizer, generator):
        vae = tiny_vae(generator, LATENTS_STD)
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **TINY_T5)).eval()
        kwargs = diffusers_config(cosmos_config(PRESET, in_channels=TINY_VAE["z_dim"], out_channels=TINY_VAE["z_dim"],
                                                text_dim=TINY_T5["d_model"]))
        kwargs.pop("_class_name")
        transformer = perturbed(CosmosTransformer3DModel(**kwargs), 0.1)
        pipe = Cosmos2TextToImagePipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                                          vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
                                          safety_checker=NoSafetyCheck())
        pipe.register_modules(safety_checker=None)  # saved as absent
        return pipe

    return save_tiny_pipeline(folder, pipeline, seed, tokenizer_class="T5TokenizerFast")


@functools.lru_cache(maxsize=None)
def tiny_cosmos_pipeline(seed=0) -> Path:
    """The tiny pipeline folder, built once per process into a temporary folder (read it, never write it)."""
    return cached_build(build_tiny_cosmos_pipeline, "tiny-cosmos-", seed)


def load_pipeline(folder):
    """``Cosmos2TextToImagePipeline.from_pretrained(folder)`` with the stand-in safety checker."""
    from diffusers import Cosmos2TextToImagePipeline

    return Cosmos2TextToImagePipeline.from_pretrained(folder, safety_checker=NoSafetyCheck())


def pipeline_decode(pipe, latents):
    """``Cosmos2TextToImagePipeline.__call__``'s decode of final ``latents``, line by line: pixels [B, 3, 1, H, W]."""
    config = pipe.vae.config
    with torch.no_grad():
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(latents.device,
                                                                                            latents.dtype)
        latents = latents / inv_std / pipe.scheduler.config.sigma_data + mean
        return pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
