"""Cosmos on gloo: TP / SP / CP (all-to-all and ring) equal the float64 diffusers oracle, as the serial model does.

Each case checks the forward, the JVP, the input gradient and every parameter gradient after
Megatron's reductions. Token counts that do not divide the shard count exercise the padding path.
"""

import functools

import pytest

from megatron_rcm.testing import run_distributed

from .cosmos_oracle import config, diffusers_model, inputs, oracle
from .parallel_check import check_layout

PRESET, BATCH, TEXT_LEN = "cosmos-tiny-a", 2, 3
EVEN, ODD = (1, 4, 6), (1, 2, 10)  # patch (1, 2, 2): 6 tokens, and 5 tokens (padded)


@functools.lru_cache(maxsize=None)
def _reference(latent):
    cfg = config(PRESET)
    model = diffusers_model(cfg, seed=11)
    data = inputs(cfg, BATCH, latent, TEXT_LEN, seed=12)
    return model.state_dict(), data, oracle(model, data)


CASES = [
    # tp, cp, sp, mode, recompute, latent
    (2, 1, True, "a2a", True, ODD),
    (1, 2, False, "a2a", False, ODD),
    (1, 2, False, "p2p", True, EVEN),
]


@pytest.mark.parametrize("tp,cp,sp,mode,recompute,latent", CASES,
                         ids=[f"tp{c[0]}-cp{c[1]}-{'sp' if c[2] else 'nosp'}-{c[3]}{'-recompute' if c[4] else ''}-"
                              f"{'padded' if c[5] == ODD else 'even'}" for c in CASES])
def test_parallel_equals_serial(tp, cp, sp, mode, recompute, latent):
    state, data, expected = _reference(latent)
    checked = run_distributed(check_layout, world_size=tp * cp,
                              args=("cosmos", PRESET, tp, cp, sp, mode, recompute, state, data, expected))
    assert all(n > 40 for n in checked)
