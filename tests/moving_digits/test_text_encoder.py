"""The toy text encoder: fixed, deterministic, padded, and strict about its vocabulary."""

import pytest
import torch

from megatron_rcm.data.moving_digits import all_prompts
from megatron_rcm.data.toy_text_encoder import NEGATIVE_PROMPT, VOCABULARY, ToyTextEncoder, UnknownWordError


def test_deterministic_and_seeded():
    a, b, c = ToyTextEncoder(seed=0), ToyTextEncoder(seed=0), ToyTextEncoder(seed=1)
    assert torch.equal(a.encode("a 7 moving up-left"), b.encode("a 7 moving up-left"))
    assert not torch.equal(a.encode("a 7 moving up-left"), c.encode("a 7 moving up-left"))


def test_rows_are_word_embeddings_then_zero_padding():
    enc = ToyTextEncoder(text_dim=12, length=6)
    out = enc.encode("a 3 moving down")
    assert out.shape == (6, 12)
    for row, word in zip(out, ("a", "3", "moving", "down")):
        assert torch.equal(row, enc.table[VOCABULARY.index(word)])
    assert torch.equal(out[4:], torch.zeros(2, 12))


def test_every_prompt_is_distinct_and_the_negative_differs():
    enc = ToyTextEncoder()
    embeds = enc.encode_batch([p for _, _, p in all_prompts()] + [NEGATIVE_PROMPT])
    flat = embeds.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(len(flat))).min() > 0
    assert torch.equal(enc.negative(), embeds[-1])


def test_unknown_words_and_long_prompts_are_errors():
    enc = ToyTextEncoder(length=4)
    with pytest.raises(UnknownWordError, match="seven"):
        enc.encode("a seven moving up")
    with pytest.raises(ValueError, match="length"):
        enc.encode("a 7 moving up moving")
