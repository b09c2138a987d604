"""Training data: webdataset latent shards, a resumable data-parallel sampler, shard writers,
and the Moving Digits set with its toy text encoder."""

from .latent_shards import LatentShardDataset, ShardFormatError
from .sampler import ResumableDistributedSampler
from .shard_writer import write_shard
from .synthetic import write_shards, write_synthetic_shards

__all__ = [
    "LatentShardDataset",
    "ResumableDistributedSampler",
    "ShardFormatError",
    "write_shard",
    "write_shards",
    "write_synthetic_shards",
]
