"""Run diffusers' transformers in exact float64: the oracle for the models and for conversion checks.

diffusers computes some pieces in float32 even in a float64 model: ``.float()`` and
``.to(torch.float32)`` upcasts (FP32LayerNorm, RMSNorm statistics, modulation, residuals, RoPE
application), the Cosmos RoPE table (float32 ``arange`` positions and frequencies) and
``get_timestep_embedding`` (a float32 ``arange`` and ``timesteps.float()``). Those alone differ by
~1e-6 from float64, so ``float64_exact()`` makes ``Tensor.float()`` and ``Tensor.to(float32)``
leave float64 tensors alone, builds the Cosmos RoPE table's float32 ``arange`` tensors in
float64, computes the timestep embedding in float64 and selects the math SDPA backend (the one
with forward-mode AD), for building and running diffusers. Nothing else changes.
"""

import contextlib
import math

import torch
from diffusers.models import embeddings as diffusers_embeddings
from diffusers.models.transformers import transformer_cosmos
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


def _keep_float64(dtype):
    return DTYPE if dtype is torch.float32 else dtype


@contextlib.contextmanager
def _float64_arange():
    original_arange = torch.arange

    def arange(*args, **kwargs):
        if "dtype" in kwargs:
            kwargs["dtype"] = _keep_float64(kwargs["dtype"])
        return original_arange(*args, **kwargs)

    torch.arange = arange
    try:
        yield
    finally:
        torch.arange = original_arange


@contextlib.contextmanager
def float64_exact():
    rope = transformer_cosmos.CosmosRotaryPosEmbed
    original_float, original_to, original_rope = torch.Tensor.float, torch.Tensor.to, rope.forward
    original_embedding = diffusers_embeddings.get_timestep_embedding

    def to(self, *args, **kwargs):
        if self.dtype == DTYPE:
            args = tuple(_keep_float64(a) for a in args)
            if "dtype" in kwargs:
                kwargs["dtype"] = _keep_float64(kwargs["dtype"])
        return original_to(self, *args, **kwargs)

    def rope_forward(self, *args, **kwargs):
        with _float64_arange():
            return original_rope(self, *args, **kwargs)

    torch.Tensor.float = lambda self, *a, **k: self if self.dtype == DTYPE else original_float(self, *a, **k)
    torch.Tensor.to, rope.forward = to, rope_forward
    diffusers_embeddings.get_timestep_embedding = _timestep_embedding_float64
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.Tensor.float, torch.Tensor.to, rope.forward = original_float, original_to, original_rope
        diffusers_embeddings.get_timestep_embedding = original_embedding
