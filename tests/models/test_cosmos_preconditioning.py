"""The TrigFlow wrapper around the Megatron Cosmos model predicts the x0 that diffusers'
Cosmos2TextToImagePipeline's own denoising steps use (docs/models.md derives the map), in float64."""

import math

import torch
from diffusers import Cosmos2TextToImagePipeline, FlowMatchEulerDiscreteScheduler

from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.diffusion.guidance import ClassifierFreeGuidance
from megatron_rcm.models.cosmos.diffusers_weights import nearest_resize
from megatron_rcm.models.diffusers_float64 import float64_exact
from megatron_rcm.parallel import parallel_context

from .cosmos_oracle import config, diffusers_model, our_model, relative_error


class _NoSafetyCheck:
    """The pipeline insists on a safety checker; with prompt embeddings and latent output it only moves it."""

    def to(self, *args, **kwargs):
        return self


def _pipeline_steps(transformer, noise, text, steps):
    """The latents before each of the pipeline's denoising steps, and its sigmas (EDM, 80 -> 0.002).
    Under ``float64_exact`` the pipeline's float32 casts leave the float64 noise alone: every step
    runs in float64."""
    pipe = Cosmos2TextToImagePipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=None,
                                      scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
                                      safety_checker=_NoSafetyCheck())
    latents = [noise * pipe.scheduler.config.sigma_max]

    def record(pipe, step, timestep, tensors):
        latents.append(tensors["latents"].clone())
        return {}

    height, width = (8 * s for s in noise.shape[-2:])  # the pixel size of these latents (VAE factor 8)
    with float64_exact(), nearest_resize():
        pipe(prompt_embeds=text, height=height, width=width, num_inference_steps=steps, guidance_scale=1.0,
             latents=noise, output_type="latent", callback_on_step_end=record,
             callback_on_step_end_tensor_inputs=["latents"])
    return latents, pipe.scheduler.sigmas


def test_trigflow_wrapper_predicts_the_pipelines_x0():
    cfg = config("cosmos-tiny-a")
    reference = diffusers_model(cfg, seed=1)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(2, cfg.in_channels, 1, 4, 6, generator=g, dtype=torch.float64)
    text = torch.randn(2, 5, cfg.text_dim, generator=g, dtype=torch.float64)
    latents, sigmas = _pipeline_steps(reference, noise, text, steps=3)
    assert sigmas[0] == 80
    with parallel_context(), torch.no_grad():
        model = our_model(cfg, reference)
        denoiser = TrigFlowDenoiser(model)  # the scale comes from the model, also through guidance:
        assert denoiser.timestep_scale == TrigFlowDenoiser(ClassifierFreeGuidance(model, text, 2.0)).timestep_scale == 1
        for i in range(2):  # the last step has sigma_min twice: an Euler step of length 0
            sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
            # the pipeline's Euler step in sigma, x' = x + (sigma' - sigma) (x - x0) / sigma, solved for x0
            x, x_next = latents[i].double(), latents[i + 1].double()
            pipeline_x0 = x - sigma * (x_next - x) / (sigma_next - sigma)
            s = torch.full((2,), math.atan(sigma), dtype=torch.float64)
            ours = denoiser.x0(x * torch.cos(s)[:, None, None, None, None], s, text)
            assert relative_error(ours, pipeline_x0) < 1e-10, i
            assert relative_error(x / (1 + sigma), pipeline_x0) > 0.1  # the network's part matters


def test_generation_samples_a_cosmos_model_at_its_timestep_scale():
    """megatron_rcm.generation wraps the model for its samplers: the wrapper keeps the family's scale."""
    from megatron_rcm.diffusion.few_step import consistency_rollout, few_step_times
    from megatron_rcm.diffusion.time import sigma_to_trigflow
    from megatron_rcm.generation import SamplingConfig, draw_noise, sample

    cfg = config("cosmos-tiny-a")
    sampling = SamplingConfig(steps=2)
    noises = [n.double() for n in draw_noise((1, cfg.in_channels, 1, 4, 6), sampling.noise_draws, seed=3)]
    text = torch.randn(1, 5, cfg.text_dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with parallel_context(), torch.no_grad():
        model = our_model(cfg, diffusers_model(cfg, seed=5))
        times = few_step_times(sampling.steps, sigma_to_trigflow(sampling.sigma_max), sampling.mid_times)
        expected = consistency_rollout(TrigFlowDenoiser(model), noises, times, text)
        assert relative_error(sample(model, sampling, noises, text), expected) < 1e-12
