"""Run diffusers' ``WanTransformer3DModel`` in exact float64: the oracle for this model and for conversion checks.

diffusers computes some pieces in float32 even in a float64 model: ``.float()`` upcasts
(FP32LayerNorm, modulation, residuals, the RoPE tables) and ``get_timestep_embedding`` (a
float32 ``arange`` and ``timesteps.float()``). Those alone differ by ~1e-6 from float64, so
``float64_exact()`` makes ``Tensor.float()`` leave float64 tensors alone, computes the timestep
embedding in float64 and selects the math SDPA backend (the one with forward-mode AD), for
building and running diffusers. Nothing else changes.
"""

import contextlib
import math

import torch
from diffusers.models import embeddings as diffusers_embeddings
from torch.nn.attention import SDPBackend, sdpa_kernel

DTYPE = torch.float64


def _timestep_embedding_float64(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1,
                                scale=1, max_period=10000):
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=DTYPE, device=timesteps.device)
    emb = timesteps[:, None].to(DTYPE) * torch.exp(exponent / (half - downscale_freq_shift))[None, :]
    emb = torch.cat([torch.sin(scale * emb), torch.cos(scale * emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return torch.nn.functional.pad(emb, (0, embedding_dim % 2))


@contextlib.contextmanager
def float64_exact():
    original_float = torch.Tensor.float
    original_embedding = diffusers_embeddings.get_timestep_embedding
    torch.Tensor.float = lambda self, *a, **k: self if self.dtype == DTYPE else original_float(self, *a, **k)
    diffusers_embeddings.get_timestep_embedding = _timestep_embedding_float64
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.Tensor.float = original_float
        diffusers_embeddings.get_timestep_embedding = original_embedding
