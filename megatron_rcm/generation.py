"""Text to video or image with a model of any family: the rCM few-step sampler or the teacher's
multi-step samplers, noise drawn in a documented order, frames written as mp4 (an image as PNG).

Noise order (what makes a result reproducible, also by an exported diffusers pipeline): one
``torch.Generator().manual_seed(seed)`` on the CPU per video; float32 draws of the latent shape
[1, C, T, h, w], first the initial noise, then one per step after the first (the re-noising of
eq. 6.1), in step order. The teacher samplers are deterministic and take only the initial draw.
"""

import argparse
import re
from dataclasses import dataclass
from typing import Callable, Tuple

import numpy as np
import torch

from .cli import non_negative_int
from .diffusion import (DEFAULT_MID_TIMES, DEFAULT_SIGMA_MAX, MAX_STEPS, ClassifierFreeGuidance, TrigFlowDenoiser,
                        consistency_rollout, few_step_times, sample_rf_euler, sample_rf_unipc, sigma_to_trigflow)

__all__ = ["FPS", "MAX_SEED", "GenerationError", "SamplerNetwork", "SamplingConfig", "VideoSize", "draw_noise",
           "sample", "seed_int", "video_frames", "video_name", "write_mp4", "write_png"]

FPS = 16  # Wan2.1's frame rate
TEACHER_SAMPLERS = {"unipc": sample_rf_unipc, "euler": sample_rf_euler}
MAX_SEED = 2**63 - 1  # --seed + a prompt's number stays below 2**64, the most manual_seed takes


class GenerationError(ValueError):
    """Generation settings that cannot work (step count, video size, sampler)."""


@dataclass(frozen=True)
class SamplingConfig:
    """How latents are sampled: the student's rCM sampler, or (``teacher_steps > 0``) a teacher's."""

    steps: int = MAX_STEPS
    """Student steps, 1..4 (eq. 6.1: times [arctan(sigma_max), *mid_times][:steps], then 0)."""

    sigma_max: float = DEFAULT_SIGMA_MAX
    """EDM noise level of the student's first step (t_0 = arctan(sigma_max))."""

    mid_times: Tuple[float, ...] = DEFAULT_MID_TIMES
    """TrigFlow times of the student's later steps, falling."""

    teacher_steps: int = 0
    """Teacher mode when > 0: this many steps of ``teacher_sampler`` with classifier-free guidance."""

    guidance_scale: float = 5.0
    """Teacher mode: classifier-free guidance scale (1 = no guidance, one network pass per step)."""

    teacher_sampler: str = "unipc"
    """Teacher mode: ``unipc`` (as the Wan pipelines sample) or ``euler``."""

    shift: float = 3.0
    """Teacher mode: RF time shift of the sampling times (Wan2.1 uses 3 at 480p, 5 at 720p)."""

    def __post_init__(self):
        object.__setattr__(self, "mid_times", tuple(float(t) for t in self.mid_times))
        if self.teacher_steps:
            if self.teacher_steps < 0:
                raise GenerationError(f"--teacher-steps must be positive, got {self.teacher_steps}")
            if self.teacher_sampler not in TEACHER_SAMPLERS:
                raise GenerationError(f"unknown teacher sampler {self.teacher_sampler!r}; "
                                      f"choose from {sorted(TEACHER_SAMPLERS)}")
            return
        limit = min(MAX_STEPS, len(self.mid_times) + 1)
        if not 1 <= self.steps <= limit:
            raise GenerationError(f"--steps must lie in 1..{limit} (the rCM sampler's step counts), got {self.steps}")
        try:
            few_step_times(self.steps, sigma_to_trigflow(self.sigma_max), self.mid_times)
        except ValueError as e:
            raise GenerationError(f"--sigma-max / --mid-times: {e}") from None

    @property
    def teacher(self) -> bool:
        return self.teacher_steps > 0

    @property
    def noise_draws(self) -> int:
        """Latent-shaped draws per video: the initial noise, and the student's re-noising."""
        return 1 if self.teacher else self.steps

    @property
    def network_calls(self) -> int:
        return self.teacher_steps if self.teacher else self.steps


@dataclass(frozen=True)
class VideoSize:
    """Frames and pixel size of a video."""

    num_frames: int
    """Frame count: 1 + a multiple of the VAE's temporal stride (81 for Wan2.1)."""

    height: int
    """Pixels; a multiple of the VAE's spatial stride x the transformer's patch size."""

    width: int
    """Pixels; a multiple of the VAE's spatial stride x the transformer's patch size."""

    def check(self, spatial_stride: int, temporal_stride: int, patch_size=(1, 1, 1), max_patches=None):
        """Raise GenerationError unless latents of this size exist and patchify, and, given the
        model's ``max_patches`` (frames, height, width: its RoPE table), fit the model."""
        for name, value, patch in (("--height", self.height, patch_size[1]), ("--width", self.width, patch_size[2])):
            multiple = spatial_stride * patch
            if value < multiple or value % multiple:
                raise GenerationError(f"{name} {value} is not a positive multiple of {multiple} "
                                      f"(VAE stride {spatial_stride} x patch size {patch})")
        latent_frames = (self.num_frames - 1) // temporal_stride + 1
        if self.num_frames < 1 or (self.num_frames - 1) % temporal_stride or latent_frames % patch_size[0]:
            raise GenerationError(f"--num-frames {self.num_frames} must be 1 + a multiple of the VAE's temporal "
                                  f"stride {temporal_stride} (e.g. 81)")
        if max_patches is not None:
            self._check_fits(spatial_stride, temporal_stride, patch_size, max_patches)

    def _check_fits(self, spatial_stride, temporal_stride, patch_size, max_patches):
        # the model itself would refuse such latents only when first called, after the slow loading
        largest = (1 + (max_patches[0] * patch_size[0] - 1) * temporal_stride,
                   max_patches[1] * patch_size[1] * spatial_stride, max_patches[2] * patch_size[2] * spatial_stride)
        sizes = (self.num_frames, self.height, self.width)
        for name, value, most, patches in zip(("--num-frames", "--height", "--width"), sizes, largest, max_patches):
            if value > most:
                raise GenerationError(f"{name} {value} is more than the model takes: at most {most} "
                                      f"(its RoPE table covers {patches} patches along that axis)")

    def latent_shape(self, channels: int, spatial_stride: int, temporal_stride: int) -> tuple:
        """[1, C, T, h, w] of one video."""
        return (1, channels, (self.num_frames - 1) // temporal_stride + 1, self.height // spatial_stride,
                self.width // spatial_stride)


def seed_int(text) -> int:
    """argparse type of a --seed: an integer 0..MAX_SEED."""
    value = non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer <= {MAX_SEED} (2**63 - 1), got {text!r}")
    return value


def draw_noise(shape, count: int, seed: int) -> list:
    """``count`` float32 CPU tensors of ``shape`` from ``torch.Generator().manual_seed(seed)``, in order."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float32) for _ in range(count)]


class SamplerNetwork:
    """The model as the samplers call it: inputs on the model's device and in its dtype, the
    velocity back on the sampler's device and in its dtype (a sampler may keep its seeded noise
    on the CPU while the model runs on a GPU), ``tick`` once per call (a progress bar)."""

    def __init__(self, model, dtype, tick):
        self.model, self.dtype, self.tick = model, dtype, tick
        self.device = next(model.parameters()).device

    @property
    def TIMESTEP_SCALE(self):  # noqa: N802 (the model family's, for the samplers)
        return self.model.TIMESTEP_SCALE

    def __call__(self, x, timestep, text):
        velocity = self.model(x.to(self.device, self.dtype), timestep.to(self.device),
                              text.to(self.device, self.dtype))
        self.tick()
        return velocity.to(x.device, x.dtype)


@torch.no_grad()
def sample(model, config: SamplingConfig, noises, text, negative=None, tick: Callable = lambda: None):
    """Latents [1, C, T, h, w] (float32, or float64 for a float64 model) for one prompt.

    ``noises``: the draws of ``draw_noise`` (``config.noise_draws`` of them); ``text`` [1, L, D] the
    prompt embedding; ``negative`` [L, D] the negative prompt's (teacher mode with guidance).
    """
    if len(noises) != config.noise_draws:
        raise ValueError(f"{config.noise_draws} noise tensors needed, got {len(noises)}")
    model_dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    dtype = torch.promote_types(model_dtype, torch.float32)
    noises = [n.to(device=device, dtype=dtype) for n in noises]
    text = text.to(device=device, dtype=dtype)
    net = SamplerNetwork(model, model_dtype, tick)
    if config.teacher:
        if config.guidance_scale != 1.0:
            net = ClassifierFreeGuidance(net, negative.to(device=device, dtype=dtype), config.guidance_scale)
        return TEACHER_SAMPLERS[config.teacher_sampler](net, noises[0], text, config.teacher_steps, config.shift)
    times = few_step_times(config.steps, sigma_to_trigflow(config.sigma_max), config.mid_times)
    return consistency_rollout(TrigFlowDenoiser(net), noises, times, text)


def video_frames(pixels: torch.Tensor) -> np.ndarray:
    """uint8 frames [F, H, W, 3] of one decoded video [1, 3, F, H, W] in [-1, 1], in diffusers'
    postprocessing expressions (``VaeImageProcessor``: denormalize, then x 255, round), so that a
    frame equals what the diffusers pipelines make of the same pixels."""
    frames = ((pixels[0].float() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


def write_png(path, frame: np.ndarray):
    """A PNG of one uint8 frame [H, W, 3] with Pillow."""
    from PIL import Image

    Image.fromarray(frame).save(path, format="PNG")


def write_mp4(path, frames: np.ndarray, fps: int = FPS):
    """H.264 mp4 (yuv420p, as players expect) of uint8 frames [F, H, W, 3] with imageio-ffmpeg."""
    import imageio_ffmpeg

    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, quality=8)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def video_name(index: int, prompt: str) -> str:
    """``0007_a-red-fox-runs``: the prompt's index and the start of its words, safe as a file name."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].strip("-")
    return f"{index:04d}_{slug or 'prompt'}"
