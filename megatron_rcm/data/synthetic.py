"""Write synthetic latent shards in the training format, for tests and smoke runs."""

import io
from pathlib import Path

import torch
import webdataset as wds


def _tensor_bytes(t):
    buffer = io.BytesIO()
    torch.save(t.clone(), buffer)
    return buffer.getvalue()


def write_shards(folder, samples, samples_per_shard, prefix="shard"):
    """Write (key, latent [C,T,H,W], embed [L,D], prompt) samples to ``{prefix}-000000.tar``, ...; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, sink = [], None
    for i, (key, latent, embed, prompt) in enumerate(samples):
        if i % samples_per_shard == 0:
            if sink is not None:
                sink.close()
            paths.append(folder / f"{prefix}-{len(paths):06d}.tar")
            sink = wds.TarWriter(str(paths[-1]))
        sink.write({"__key__": key, "latent.pt": _tensor_bytes(latent), "embed.pt": _tensor_bytes(embed),
                    "prompt.txt": prompt.encode()})
    if sink is not None:
        sink.close()
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
