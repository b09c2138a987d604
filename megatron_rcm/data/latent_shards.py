"""Read webdataset tar shards of precomputed latents and text embeddings, by sample index.

A sample is the group of tar members that share a key (webdataset's convention):
``{key}.latent.pt`` (a [C, T, H, W] tensor), ``{key}.embed.pt`` ([L, text_dim]) and
``{key}.prompt.txt`` — the format of the rCM reference. The shards are indexed once (tar
headers only), after which any sample is read by seeking to its members. Random access is what
makes the data order exact and resumable at any data-parallel size (see ``sampler``); streaming
webdataset pipelines can only skip forward.
"""

import glob
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

REQUIRED_MEMBERS = ("latent.pt", "embed.pt", "prompt.txt")


class ShardFormatError(ValueError):
    """A shard whose samples are not in the expected format."""


@dataclass(frozen=True)
class SampleLocation:
    shard: int
    key: str
    members: dict  # extension -> (offset, size) of the member's data in the tar file


def expand_shard_urls(spec):
    """Shard paths from a folder, a glob, a list, or webdataset brace notation 'data-{000..009}.tar'."""
    if isinstance(spec, (list, tuple)):
        return [str(p) for p in spec]
    path = Path(spec)
    if path.is_dir():
        found = sorted(str(p) for p in path.glob("*.tar"))
    elif "{" in str(spec):
        import braceexpand

        found = list(braceexpand.braceexpand(str(spec)))
    else:
        found = sorted(glob.glob(str(spec)))
    if not found:
        raise ShardFormatError(f"no .tar shards found at {spec}")
    return found


def _check_complete(url, end):
    """A tar cut short, even at a member boundary, lacks the two zero blocks that end an archive:
    tarfile reads it without a word, and the samples after the cut would be lost silently."""
    with open(url, "rb") as f:
        f.seek(end)
        marker = f.read(1024)
    if len(marker) < 1024 or marker.strip(b"\0"):
        raise ShardFormatError(f"shard {url} is truncated (no end-of-archive marker after {end} bytes); "
                               "write it again")


def index_shards(urls):
    """Sample locations of every complete sample in ``urls``, in shard order then key order."""
    samples = []
    for shard_id, url in enumerate(urls):
        if not os.path.exists(url):
            raise ShardFormatError(f"shard {url} does not exist")
        groups = {}
        try:
            with tarfile.open(url, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    name = os.path.basename(member.name)
                    key, _, ext = name.partition(".")
                    prefix = os.path.dirname(member.name)
                    groups.setdefault(os.path.join(prefix, key), {})[ext] = (member.offset_data, member.size)
            end = tar.offset
        except tarfile.TarError as e:
            raise ShardFormatError(f"shard {url} is not a readable tar file ({e})") from e
        _check_complete(url, end)
        for key in sorted(groups):
            missing = [ext for ext in REQUIRED_MEMBERS if ext not in groups[key]]
            if missing:
                raise ShardFormatError(f"shard {url}: sample {key!r} lacks {missing}")
            samples.append(SampleLocation(shard_id, key, groups[key]))
    if not samples:
        raise ShardFormatError(f"no samples in {len(urls)} shard(s)")
    return samples


class LatentShardDataset(Dataset):
    """Map-style dataset over tar shards: ``dataset[i]`` -> dict(latent, embed, prompt, key)."""

    def __init__(self, shards, latent_shape=None, text_shape=None):
        self.urls = expand_shard_urls(shards)
        self.samples = index_shards(self.urls)
        self.latent_shape = None if latent_shape is None else tuple(latent_shape)
        self.text_shape = None if text_shape is None else tuple(text_shape)

    def __len__(self):
        return len(self.samples)

    def _read(self, location, ext):
        offset, size = location.members[ext]
        with open(self.urls[location.shard], "rb") as f:
            f.seek(offset)
            return f.read(size)

    def __getitem__(self, index):
        loc = self.samples[index]
        latent = torch.load(io.BytesIO(self._read(loc, "latent.pt")), map_location="cpu", weights_only=True)
        embed = torch.load(io.BytesIO(self._read(loc, "embed.pt")), map_location="cpu", weights_only=True)
        prompt = self._read(loc, "prompt.txt").decode("utf-8")
        where = f"{self.urls[loc.shard]}:{loc.key}"
        if latent.dim() != 4 or (self.latent_shape and tuple(latent.shape) != self.latent_shape):
            raise ShardFormatError(f"{where}: latent has shape {tuple(latent.shape)}, expected "
                                   f"{self.latent_shape or '[C, T, H, W]'}")
        if embed.dim() != 2 or (self.text_shape and tuple(embed.shape) != self.text_shape):
            raise ShardFormatError(f"{where}: embed has shape {tuple(embed.shape)}, expected "
                                   f"{self.text_shape or '[L, text_dim]'}")
        return {"latent": latent, "embed": embed, "prompt": prompt, "key": loc.key}
