"""Moving Digits: deterministic videos of real digits, a split by source image, shards that read back."""

import pytest
import torch

from megatron_rcm.data.latent_shards import LatentShardDataset
from megatron_rcm.data.moving_digits import (DIRECTIONS, MovingDigitsSpec, _digits, make_videos, prompt_grid,
                                             split_indices, write_moving_digits_shards)
from megatron_rcm.data.toy_text_encoder import NEGATIVE_PROMPT_FILE, ToyTextEncoder, write_training_data


def test_digits_are_scikit_learns():
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    images, targets = _digits()
    reference = load_digits()
    assert torch.equal(images, torch.tensor(reference.images, dtype=torch.float32))
    assert torch.equal(targets, torch.tensor(reference.target))


def test_split_is_by_source_image_disjoint_and_complete():
    train, val, test = (split_indices(split).tolist() for split in ("train", "val", "test"))
    assert not set(train) & set(test) and not set(train) & set(val) and not set(val) & set(test)
    assert sorted(train + val + test) == list(range(1797))
    assert len(val) == 179 and len(test) == 180  # the held-out 359 images, halved
    assert split_indices("train").tolist() == train
    for split, images in (("val", val), ("test", test)):
        videos = make_videos(split, 200, seed=5)
        assert set(videos.sources.tolist()) <= set(images)
        assert set(videos.digits.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split"):
        split_indices("validation")


def test_same_seed_same_videos_other_seed_other_videos():
    a, b, c = make_videos("train", 16, seed=7), make_videos("train", 16, seed=7), make_videos("train", 16, seed=8)
    assert torch.equal(a.videos, b.videos) and a.prompts == b.prompts
    assert not torch.equal(a.videos, c.videos)


def test_each_frame_is_the_source_digit_shifted_by_the_direction():
    images, targets = _digits()
    spec = MovingDigitsSpec()
    batch = make_videos("train", 40, seed=int(torch.randint(1000, ())))
    for video, source, digit, direction, prompt in zip(batch.videos, batch.sources, batch.digits,
                                                       batch.directions, batch.prompts):
        assert video.shape == spec.latent_shape
        assert int(targets[source]) == int(digit)
        name, dy, dx = DIRECTIONS[int(direction)]
        assert prompt == f"a {int(digit)} moving {name}"
        frames = (video[0] + 1) * 8  # back to load_digits' 0..16
        assert torch.allclose(frames.sum(dim=(1, 2)), images[source].sum().expand(spec.frames))  # fully on canvas
        for f in range(1, spec.frames):
            shifted = torch.roll(frames[0], shifts=(f * dy, f * dx), dims=(0, 1))
            assert torch.equal(frames[f], shifted), (f, name)
    assert batch.videos.min() == -1 and batch.videos.max() == 1


def test_fixed_classes_follow_the_prompt_grid():
    digits, directions = prompt_grid(3)
    assert len(digits) == 240 and len(set(zip(digits.tolist(), directions.tolist()))) == 80
    batch = make_videos("test", len(digits), seed=1, digits=digits, directions=directions)
    assert torch.equal(batch.digits, digits) and torch.equal(batch.directions, directions)


def test_shards_read_back_with_the_training_reader(tmp_path):
    encoder = ToyTextEncoder()
    paths = write_moving_digits_shards(tmp_path, "train", num_samples=11, samples_per_shard=4, encoder=encoder, seed=3)
    assert len(paths) == 3
    data = LatentShardDataset(tmp_path, latent_shape=MovingDigitsSpec().latent_shape,
                              text_shape=(encoder.length, encoder.text_dim))
    expected = make_videos("train", 11, seed=3)
    assert len(data) == 11
    for i in range(11):
        sample = data[i]
        assert torch.equal(sample["latent"], expected.videos[i])
        assert sample["prompt"] == expected.prompts[i]
        assert torch.equal(sample["embed"], encoder.encode(expected.prompts[i]))


def test_training_data_has_the_negative_prompt(tmp_path):
    negative = write_training_data(tmp_path, num_samples=5, samples_per_shard=4, seed=3)
    assert negative == str(tmp_path / NEGATIVE_PROMPT_FILE)
    assert torch.equal(torch.load(negative), ToyTextEncoder().negative())
    assert len(LatentShardDataset(tmp_path)) == 5
