"""megatron_rcm.generation's pieces without a pipeline: frames as diffusers makes them, the sampler's
float32 arithmetic around a bfloat16 model, the video-size and seed limits."""

import argparse

import numpy as np
import pytest
import torch

from megatron_rcm.diffusion import TrigFlowDenoiser, consistency_rollout, few_step_times, sigma_to_trigflow
from megatron_rcm.generation import (MAX_SEED, GenerationError, SamplingConfig, VideoSize, draw_noise, sample,
                                     seed_int, video_frames)


def test_frames_are_what_the_diffusers_image_processor_makes_of_the_pixels():
    from diffusers.image_processor import VaeImageProcessor

    # a decoder's pixels overshoot [-1, 1]: they must saturate at 0 and 255, not wrap around
    pixels = 1.5 * torch.randn(1, 3, 4, 6, 5, generator=torch.Generator().manual_seed(0))
    assert pixels.abs().max() > 1.2
    images = VaeImageProcessor().postprocess(pixels[0].permute(1, 0, 2, 3), output_type="pil")
    expected = np.stack([np.asarray(image) for image in images])
    frames = video_frames(pixels)
    assert frames.dtype == np.uint8 and frames.shape == (4, 6, 5, 3)
    np.testing.assert_array_equal(frames, expected)


class _Bfloat16Velocity(torch.nn.Module):
    """A bfloat16 network: v = a x + b timestep / 1000 + the text's mean, all in bfloat16."""

    TIMESTEP_SCALE = 1000.0

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.bfloat16))
        self.b = torch.nn.Parameter(torch.tensor(-0.3, dtype=torch.bfloat16))

    def forward(self, x, timestep, text):
        assert x.dtype == text.dtype == torch.bfloat16
        shape = (-1, *[1] * (x.dim() - 1))
        return self.a * x + self.b * (timestep / 1000).to(x.dtype).reshape(shape) + text.mean(dim=(1, 2)).reshape(shape)


def test_the_sampler_keeps_a_bfloat16_models_samples_in_float32():
    """Only the network runs in bfloat16; the noise, the rollout's arithmetic and the latents stay float32."""
    model, config = _Bfloat16Velocity(), SamplingConfig(steps=3)
    noises = draw_noise((1, 2, 1, 3, 3), config.noise_draws, seed=4)
    text = torch.randn(1, 3, 5, generator=torch.Generator().manual_seed(5))
    latents = sample(model, config, noises, text)

    def float32_net(x, timestep, t):  # the same network, its inputs rounded to bfloat16, its output back
        return model(x.bfloat16(), timestep, t.bfloat16()).float()

    times = few_step_times(3, sigma_to_trigflow(config.sigma_max), config.mid_times)
    with torch.no_grad():
        expected = consistency_rollout(TrigFlowDenoiser(float32_net, 1000.0), noises, times, text)
    assert latents.dtype == torch.float32
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)


def test_the_latent_frame_count_must_divide_by_the_temporal_patch():
    VideoSize(9, 32, 32).check(8, 4, patch_size=(1, 2, 2))  # 3 latent frames, temporal patch 1
    VideoSize(5, 32, 32).check(8, 4, patch_size=(2, 2, 2))  # 2 latent frames, patch 2
    with pytest.raises(GenerationError, match="--num-frames 9"):
        VideoSize(9, 32, 32).check(8, 4, patch_size=(2, 2, 2))


def test_the_largest_seed_is_accepted_and_one_more_refused():
    assert seed_int(str(MAX_SEED)) == MAX_SEED
    torch.Generator().manual_seed(MAX_SEED + 10**6)  # a prompt's number added stays a valid seed
    with pytest.raises(argparse.ArgumentTypeError, match="expected an integer <="):
        seed_int(str(MAX_SEED + 1))
