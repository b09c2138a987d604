"""TP / SP / CP (all-to-all and ring) on gloo equal the float64 diffusers oracle, as the serial model does.

Each case checks the forward, the JVP, the input gradient and every parameter gradient after
Megatron's reductions (TP all-reduce of sequence-parallel parameters, sum over the CP group).
Token counts that do not divide the shard count exercise the padding path.
"""

import functools

import pytest

from megatron_rcm.testing import run_distributed

from .parallel_check import check_layout
from .wan_oracle import config, diffusers_model, inputs, oracle

PRESET, BATCH, TEXT_LEN = "tiny-b", 2, 3
EVEN, ODD = (2, 2, 3), (2, 1, 7)  # patch (2, 1, 1): 12 tokens, and 7 tokens (padded)


@functools.lru_cache(maxsize=None)
def _reference(latent):
    cfg = config(PRESET)
    model = diffusers_model(cfg, seed=11)
    data = inputs(cfg, BATCH, latent, TEXT_LEN, seed=12)
    return model.state_dict(), data, oracle(model, data)


CASES = [
    # tp, cp, sp, mode, recompute, latent
    (2, 1, True, "a2a", False, EVEN),
    (2, 1, False, "a2a", True, ODD),
    (1, 2, False, "a2a", False, ODD),
    (1, 2, False, "p2p", True, ODD),
    (2, 2, True, "a2a", False, ODD),
    (2, 2, True, "p2p", False, EVEN),
    (2, 2, False, "p2p", False, ODD),
]


@pytest.mark.parametrize("tp,cp,sp,mode,recompute,latent", CASES,
                         ids=[f"tp{c[0]}-cp{c[1]}-{'sp' if c[2] else 'nosp'}-{c[3]}{'-recompute' if c[4] else ''}-"
                              f"{'padded' if c[5] == ODD else 'even'}" for c in CASES])
def test_parallel_equals_serial(tp, cp, sp, mode, recompute, latent):
    state, data, expected = _reference(latent)
    checked = run_distributed(check_layout, world_size=tp * cp,
                              args=("wan", PRESET, tp, cp, sp, mode, recompute, state, data, expected))
    assert all(n > 40 for n in checked)
