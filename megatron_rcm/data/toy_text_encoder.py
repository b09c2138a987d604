"""A deterministic word-level text encoder for Moving Digits (no download, no learning).

Each word of a closed vocabulary has a fixed random embedding (standard normal, from a seeded
generator, one row per word in vocabulary order). A prompt is split on spaces; its embedding is
the words' rows followed by zero rows up to ``length`` (zero padding, as Wan pads umT5 outputs).
Words outside the vocabulary are an error rather than silently ignored. ``write_training_data``
writes Moving Digits shards embedded with it, for the shipped teacher.
"""

import os

import torch

from .moving_digits import DIRECTIONS, NUM_DIGITS, write_moving_digits_shards

NEGATIVE_PROMPT = "a blurry static noisy smudge"
VOCABULARY = ("a", "moving", *(str(d) for d in range(NUM_DIGITS)), *(name for name, _, _ in DIRECTIONS),
              "blurry", "static", "noisy", "smudge")


class UnknownWordError(KeyError):
    """A prompt word the encoder has no embedding for."""


class ToyTextEncoder:
    def __init__(self, text_dim: int = 32, length: int = 8, seed: int = 0, vocabulary=VOCABULARY):
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("the vocabulary has repeated words")
        self.text_dim, self.length = text_dim, length
        self.index = {word: i for i, word in enumerate(vocabulary)}
        self.table = torch.randn(len(vocabulary), text_dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, prompt: str) -> torch.Tensor:
        """[length, text_dim] float32 embedding of ``prompt``."""
        words = prompt.split()
        unknown = [w for w in words if w not in self.index]
        if unknown:
            raise UnknownWordError(f"words {unknown} of {prompt!r} are not in the encoder's vocabulary")
        if len(words) > self.length:
            raise ValueError(f"{prompt!r} has {len(words)} words; the encoder's length is {self.length}")
        out = torch.zeros(self.length, self.text_dim)
        out[:len(words)] = self.table[[self.index[w] for w in words]]
        return out

    def encode_batch(self, prompts) -> torch.Tensor:
        """[N, length, text_dim]."""
        return torch.stack([self.encode(p) for p in prompts])

    def negative(self) -> torch.Tensor:
        """[length, text_dim] embedding of ``NEGATIVE_PROMPT`` (the CFG unconditional branch)."""
        return self.encode(NEGATIVE_PROMPT)


NEGATIVE_PROMPT_FILE = "negative_prompt.pt"


def write_training_data(folder, num_samples: int, samples_per_shard: int = 1024, seed: int = 0):
    """What ``examples/pretrain_rcm.py`` needs to distil the shipped teacher: train-split shards
    with the toy text encoder's embeddings, and its negative prompt as ``folder/negative_prompt.pt``
    (written last: its presence marks complete data). Returns the negative prompt's path."""
    encoder = ToyTextEncoder()
    write_moving_digits_shards(folder, "train", num_samples, samples_per_shard, encoder, seed=seed)
    negative = os.path.join(folder, NEGATIVE_PROMPT_FILE)
    torch.save(encoder.negative(), negative)
    return negative
