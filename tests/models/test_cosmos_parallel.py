"""Cosmos on gloo: TP / SP / CP (all-to-all and ring) equal the float64 diffusers oracle, as the serial model does.

Each case checks the forward, the JVP, the input gradient and every parameter gradient after
Megatron's reductions. Token counts that do not divide the shard count exercise the padding path.
"""

import pytest

from .parallel_check import case_id, check_parallel_equals_serial

PRESET = "cosmos-tiny-a"
EVEN, ODD = (1, 4, 6), (1, 2, 10)  # patch (1, 2, 2): 6 tokens, and 5 tokens (padded)
CASES = [
    # tp, cp, sp, mode, recompute, latent
    (2, 1, True, "a2a", True, ODD),
    (1, 2, False, "a2a", False, ODD),
    (1, 2, False, "p2p", True, EVEN),
]


@pytest.mark.parametrize("tp,cp,sp,mode,recompute,latent", CASES, ids=[case_id(*c[:5], c[5] == ODD) for c in CASES])
def test_parallel_equals_serial(tp, cp, sp, mode, recompute, latent):
    check_parallel_equals_serial("cosmos", PRESET, latent, tp, cp, sp, mode, recompute)
