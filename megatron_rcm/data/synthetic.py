"""Write synthetic latent shards in the training format, for tests and smoke runs."""

import itertools
from pathlib import Path

import torch

from .shard_writer import write_shard


def write_shards(folder, samples, samples_per_shard, prefix="shard"):
    """Write (key, latent [C,T,H,W], embed [L,D], prompt) samples to ``{prefix}-000000.tar``, ...; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, samples = [], iter(samples)
    while chunk := list(itertools.islice(samples, samples_per_shard)):
        paths.append(folder / f"{prefix}-{len(paths):06d}.tar")
        write_shard(paths[-1], chunk)
    return paths


def write_synthetic_shards(folder, num_samples, samples_per_shard, latent_shape, text_shape, seed=0,
                           dtype=torch.bfloat16):
    """Random latents [C,T,H,W] and embeddings [L,D] in tar shards ``shard-000000.tar``, ...; returns the paths."""
    gen = torch.Generator().manual_seed(seed)
    # the generator draws latent then embed per sample, in order (tests rely on it)
    samples = ((f"sample{i:08d}", torch.randn(*latent_shape, generator=gen).to(dtype),
                torch.randn(*text_shape, generator=gen).to(dtype), f"synthetic sample {i}")
               for i in range(num_samples))
    return write_shards(folder, samples, samples_per_shard)
