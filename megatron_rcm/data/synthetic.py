"""Write synthetic latent shards in the training format, for tests and smoke runs."""

import io
from pathlib import Path

import torch
import webdataset as wds


def _tensor_bytes(t):
    buffer = io.BytesIO()
    torch.save(t.clone(), buffer)
    return buffer.getvalue()


def write_synthetic_shards(folder, num_samples, samples_per_shard, latent_shape, text_shape, seed=0,
                           dtype=torch.bfloat16):
    """Random latents [C,T,H,W] and embeddings [L,D] in tar shards ``shard-000000.tar``, ...; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for start in range(0, num_samples, samples_per_shard):
        path = folder / f"shard-{len(paths):06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(start, min(start + samples_per_shard, num_samples)):
                sink.write({
                    "__key__": f"sample{i:08d}",
                    "latent.pt": _tensor_bytes(torch.randn(*latent_shape, generator=gen).to(dtype)),
                    "embed.pt": _tensor_bytes(torch.randn(*text_shape, generator=gen).to(dtype)),
                    "prompt.txt": f"synthetic sample {i}".encode(),
                })
        paths.append(path)
    return paths
