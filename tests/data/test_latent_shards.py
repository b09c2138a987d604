"""Latent shards: read what was written, exact data order across restarts and data-parallel sizes."""

import tarfile

import pytest
import torch
from torch.utils.data import DataLoader

from megatron_rcm.data.latent_shards import LatentShardDataset, ShardFormatError
from megatron_rcm.data.sampler import ResumableDistributedSampler
from megatron_rcm.data.synthetic import write_shards, write_synthetic_shards

LATENT, TEXT = (2, 3, 4, 4), (5, 6)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(folder, num_samples=23, samples_per_shard=5, latent_shape=LATENT, text_shape=TEXT, seed=3)
    return folder


def test_reads_every_sample_as_written(shards):
    data = LatentShardDataset(shards, latent_shape=LATENT, text_shape=TEXT)
    assert len(data) == 23 and len(data.urls) == 5
    gen = torch.Generator().manual_seed(3)
    for i in range(23):  # the writer draws latent then embed per sample
        latent = torch.randn(*LATENT, generator=gen).bfloat16()
        embed = torch.randn(*TEXT, generator=gen).bfloat16()
        sample = data[i]
        assert torch.equal(sample["latent"], latent) and torch.equal(sample["embed"], embed)
        assert sample["prompt"] == f"synthetic sample {i}" and sample["key"] == f"sample{i:08d}"


def _consume(sampler, data, steps, workers=0):
    loader = DataLoader(data, batch_sampler=sampler, num_workers=workers, collate_fn=lambda b: [s["key"] for s in b])
    out = []
    for _, keys in zip(range(steps), loader):
        out.append(keys)
    return out


def test_resume_and_data_parallel_size_change_keep_the_global_order(shards):
    data = LatentShardDataset(shards)
    # one rank, micro-batch 4: the reference stream of 10 steps (crosses an epoch boundary)
    straight = sum(_consume(ResumableDistributedSampler(len(data), 4, 0, 1, seed=9), data, 10), [])
    # two data-parallel ranks with micro-batch 2 see the same global windows of 4
    ranks = [_consume(ResumableDistributedSampler(len(data), 2, r, 2, seed=9), data, 10, workers=2) for r in range(2)]
    assert sum((ranks[0][s] + ranks[1][s] for s in range(10)), []) == straight
    # resume after 3 steps (12 samples) on one rank equals the tail of the straight run
    resumed = ResumableDistributedSampler(len(data), 4, 0, 1, seed=9)
    resumed.load_state_dict({"consumed_samples": 12, "seed": 9, "num_samples": 23})
    assert sum(_consume(resumed, data, 7), []) == straight[12:]
    # every epoch is a permutation, and consecutive epochs differ
    assert sorted(straight[:23]) == sorted(s["key"] for s in (data[i] for i in range(23)))
    assert straight[:17] != straight[23:40]


def test_mismatched_resume_and_bad_shards_are_clear(shards, tmp_path):
    sampler = ResumableDistributedSampler(23, 1, 0, 1, seed=9)
    for other in ({"seed": 8}, {"num_samples": 24}):  # either changes every epoch's permutation
        with pytest.raises(ValueError, match="use the same shards and --seed"):
            sampler.load_state_dict({"consumed_samples": 4, "seed": 9, "num_samples": 23, **other})
    with pytest.raises(ShardFormatError, match="no .tar shards"):
        LatentShardDataset(tmp_path)
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        tar.add(next(shards.glob("*.tar")), arcname="x.latent.pt")
    with pytest.raises(ShardFormatError, match=r"lacks \['embed.pt', 'prompt.txt'\]"):
        LatentShardDataset(tmp_path)
    with pytest.raises(ShardFormatError, match=r"latent has shape \(2, 3, 4, 4\), expected \(2, 3, 8, 8\)"):
        LatentShardDataset(shards, latent_shape=(2, 3, 8, 8))[0]
    with pytest.raises(ShardFormatError, match=r"embed has shape \(5, 6\), expected \(5, 7\)"):
        LatentShardDataset(shards, text_shape=(5, 7))[0]


@pytest.mark.parametrize("bad, message", [("latent", r"latent has shape \(3, 4, 4\), expected \[C, T, H, W\]"),
                                          ("embed", r"embed has shape \(5, 6, 1\), expected \[L, text_dim\]")])
def test_a_sample_of_the_wrong_rank_is_refused_without_expected_shapes(tmp_path, bad, message):
    g = torch.Generator().manual_seed(4)
    latent = torch.randn(3, 4, 4, generator=g) if bad == "latent" else torch.randn(*LATENT, generator=g)
    embed = torch.randn(5, 6, 1, generator=g) if bad == "embed" else torch.randn(*TEXT, generator=g)
    write_shards(tmp_path, [("sample0", latent, embed, "a prompt")], samples_per_shard=1)
    with pytest.raises(ShardFormatError, match=message):
        LatentShardDataset(tmp_path)[0]


def test_every_spelling_of_the_shards_reads_them_in_name_order(shards):
    """A folder, a glob and brace notation: the same shards in name order, so that the data order
    does not hang on the order in which a file system lists them."""
    names = sorted(str(p) for p in shards.glob("*.tar"))
    for spec in (shards, str(shards / "shard-*.tar"), str(shards / "shard-{000000..000004}.tar")):
        assert LatentShardDataset(spec).urls == names, spec
