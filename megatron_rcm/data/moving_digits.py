"""Moving Digits: short videos of real handwritten digits moving in one of 8 directions, with prompts.

The digits are those of scikit-learn's ``load_digits`` (1,797 real 8x8 scans, pixel values 0..16),
read from the copy of its file in ``assets/moving_digits/digits.csv.gz`` (no download, no
scikit-learn needed). A video is one digit pasted on a black ``size x size`` canvas and moved one pixel
per frame in a direction (``DIRECTIONS``), with a prompt such as "a 7 moving up-left".

Normalisation (latent = pixels): ``x = value / 8 - 1``, so the background is -1 and a full
stroke is +1; the latent is [1, T, H, W]. The train/val/test split is by source image (a fixed
permutation of the 1,797 images), so no handwritten sample appears in two splits. Every video is a
deterministic function of (split, seed, index).
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .synthetic import write_shards

# (name, dy, dx) in pixels per frame; y grows downwards
DIRECTIONS = (("up", -1, 0), ("down", 1, 0), ("left", 0, -1), ("right", 0, 1),
              ("up-left", -1, -1), ("up-right", -1, 1), ("down-left", 1, -1), ("down-right", 1, 1))
NUM_DIGITS = 10
DIGIT_SIZE = 8
SPLITS = ("train", "val", "test")
HELD_OUT_FRACTION = 0.2  # of the images, halved into val and test
_SPLIT_SEED = 20261127


@dataclass(frozen=True)
class MovingDigitsSpec:
    frames: int = 8
    size: int = 16

    def __post_init__(self):
        if self.size < DIGIT_SIZE + self.frames - 1:
            raise ValueError(f"a {self.size}x{self.size} canvas cannot hold an 8x8 digit moving "
                             f"{self.frames - 1} pixels")

    @property
    def latent_shape(self):
        return (1, self.frames, self.size, self.size)


def prompt_for(digit: int, direction: int) -> str:
    return f"a {digit} moving {DIRECTIONS[direction][0]}"


def all_prompts():
    """The 80 (digit, direction) prompts, digit-major: [(digit, direction, prompt)]."""
    return [(d, k, prompt_for(d, k)) for d in range(NUM_DIGITS) for k in range(len(DIRECTIONS))]


# scikit-learn's copy of the UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin,
# C. Kaynak, 1998; CC BY 4.0): rows of 64 pixels and the digit, as load_digits reads it
DIGITS_FILE = Path(__file__).resolve().parents[2] / "assets" / "moving_digits" / "digits.csv.gz"


@functools.lru_cache(maxsize=1)
def _digits():
    """(images [1797, 8, 8] float32 in 0..16, targets [1797]): what scikit-learn's load_digits returns."""
    rows = np.loadtxt(DIGITS_FILE, delimiter=",")
    return (torch.tensor(rows[:, :-1], dtype=torch.float32).reshape(-1, DIGIT_SIZE, DIGIT_SIZE),
            torch.tensor(rows[:, -1], dtype=torch.long))


def split_indices(split: str) -> torch.Tensor:
    """Indices into ``load_digits`` of the source images of ``split`` (disjoint, together all 1,797).

    The held-out 20% is split in two: "val" for choosing hyperparameters, "test" for the table
    reported once. Neither the teacher nor the classifier trains on either.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    count = len(_digits()[1])
    order = torch.randperm(count, generator=torch.Generator().manual_seed(_SPLIT_SEED))
    num_train = count - round(HELD_OUT_FRACTION * count)
    num_val = (count - num_train) // 2
    bounds = {"train": (0, num_train), "val": (num_train, num_train + num_val), "test": (num_train + num_val, count)}
    start, stop = bounds[split]
    return order[start:stop]


def render(image: torch.Tensor, direction: int, start, spec: MovingDigitsSpec) -> torch.Tensor:
    """[1, T, H, W] video of the 8x8 ``image`` (values 0..16) starting at ``start`` = (y, x)."""
    _, dy, dx = DIRECTIONS[direction]
    video = torch.zeros(spec.frames, spec.size, spec.size)
    y, x = start
    for f in range(spec.frames):
        top, left = y + f * dy, x + f * dx
        video[f, top:top + DIGIT_SIZE, left:left + DIGIT_SIZE] = image
    return (video / 8 - 1).unsqueeze(0)


def _random_start(gen, direction, spec):
    """A start position that keeps the digit on the canvas for all frames, uniform among those."""
    room = spec.size - DIGIT_SIZE  # positions 0..room are on the canvas
    travel = spec.frames - 1
    start = []
    for step in DIRECTIONS[direction][1:]:
        low, high = (travel, room) if step < 0 else (0, room - travel) if step > 0 else (0, room)
        start.append(int(torch.randint(low, high + 1, (), generator=gen)))
    return tuple(start)


@dataclass
class VideoBatch:
    videos: torch.Tensor  # [N, 1, T, H, W]
    digits: torch.Tensor  # [N]
    directions: torch.Tensor  # [N]
    sources: torch.Tensor  # [N] load_digits index of each video's image
    prompts: list


def make_videos(split: str, num: int, seed: int, spec: MovingDigitsSpec = MovingDigitsSpec(),
                digits=None, directions=None) -> VideoBatch:
    """``num`` videos of ``split``: random source image, direction and start, all from ``seed``.

    ``digits`` / ``directions`` (length ``num``) fix the class of each video instead; the image is
    then drawn among the split's images of that digit.
    """
    images, targets = _digits()
    pool = split_indices(split)
    by_digit = [pool[targets[pool] == d] for d in range(NUM_DIGITS)]
    gen = torch.Generator().manual_seed(seed)
    out = {key: [] for key in ("videos", "digits", "directions", "sources")}
    for i in range(num):
        if digits is None:
            source = int(pool[torch.randint(len(pool), (), generator=gen)])
        else:
            candidates = by_digit[int(digits[i])]
            source = int(candidates[torch.randint(len(candidates), (), generator=gen)])
        direction = int(torch.randint(len(DIRECTIONS), (), generator=gen)) if directions is None else int(directions[i])
        out["videos"].append(render(images[source], direction, _random_start(gen, direction, spec), spec))
        out["digits"].append(int(targets[source]))
        out["directions"].append(direction)
        out["sources"].append(source)
    digits_t = torch.tensor(out["digits"], dtype=torch.long)
    directions_t = torch.tensor(out["directions"], dtype=torch.long)
    return VideoBatch(torch.stack(out["videos"]), digits_t, directions_t, torch.tensor(out["sources"]),
                      [prompt_for(int(d), int(k)) for d, k in zip(digits_t, directions_t)])


def prompt_grid(samples_per_prompt: int):
    """(digits, directions) covering all 80 prompts, each ``samples_per_prompt`` times in a row."""
    pairs = torch.tensor([(d, k) for d, k, _ in all_prompts()]).repeat_interleave(samples_per_prompt, dim=0)
    return pairs[:, 0], pairs[:, 1]


def write_moving_digits_shards(folder, split: str, num_samples: int, samples_per_shard: int, encoder, seed: int,
                               spec: MovingDigitsSpec = MovingDigitsSpec(), dtype=torch.float32):
    """Moving Digits in the training shard format (``{key}.latent.pt`` [1,T,H,W], ``{key}.embed.pt``
    [L, text_dim] from ``encoder``, ``{key}.prompt.txt``); returns the shard paths."""
    batch = make_videos(split, num_samples, seed, spec)
    samples = ((f"{split}{i:08d}", batch.videos[i].to(dtype), encoder.encode(batch.prompts[i]).to(dtype),
                batch.prompts[i]) for i in range(num_samples))
    return write_shards(folder, samples, samples_per_shard, prefix=split)

