"""TP / SP / CP (all-to-all and ring) on gloo equal the float64 diffusers oracle, as the serial model does.

Each case checks the forward, the JVP, the input gradient and every parameter gradient after
Megatron's reductions (megatron's DDP and finalize_model_grads), and the gradient norm megatron's optimizers take.
Token counts that do not divide the shard count exercise the padding path.
"""

import pytest

from .parallel_check import case_id, check_parallel_equals_serial

PRESET = "tiny-b"
EVEN, ODD = (2, 2, 3), (2, 1, 7)  # patch (2, 1, 1): 12 tokens, and 7 tokens (padded)
CASES = [
    # tp, cp, sp, mode, recompute (True, or "keep attention": full recompute keeping attention outputs), latent
    (2, 1, True, "a2a", False, EVEN),
    (2, 1, False, "a2a", True, ODD),
    (1, 2, False, "a2a", False, ODD),
    (1, 2, False, "p2p", True, ODD),
    (2, 2, True, "a2a", False, ODD),
    (2, 2, True, "p2p", False, EVEN),
    (2, 2, False, "p2p", False, ODD),
    (2, 1, True, "a2a", "keep attention", EVEN),
    (1, 2, False, "a2a", "keep attention", ODD),
]


@pytest.mark.parametrize("tp,cp,sp,mode,recompute,latent", CASES, ids=[case_id(*c[:5], c[5] == ODD) for c in CASES])
def test_parallel_equals_serial(tp, cp, sp, mode, recompute, latent):
    check_parallel_equals_serial("wan", PRESET, latent, tp, cp, sp, mode, recompute)


def test_cross_attention_norm_under_sequence_parallelism():
    """tiny-a has the affine cross-attention LayerNorm (norm2, as the released Wan2.1 models do), which
    tiny-b lacks: under SP its weight and bias see this rank's tokens only and must be summed over TP."""
    check_parallel_equals_serial("wan", "tiny-a", (1, 2, 10), 2, 1, True, "a2a", False)
