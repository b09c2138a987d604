"""NCCL, one GPU: an sCM-only run (DMD weight 0) saves and resumes through megatron's
DistributedOptimizer although its fake score never steps. Its optimizer has no Adam state then,
and megatron reads every parameter's state to save it (the digits study's sCM runs died at their
save on an H200)."""

import math

import pytest
import torch

from .test_pretrain_rcm import ITERS, _run
from .tiny_setup import compared, make_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]


def test_scm_only_saves_and_resumes(tmp_path):
    inputs = make_inputs(tmp_path / "inputs")
    scm_only = ["--dmd-weight", "0", "--deterministic-mode"]
    first = _run(inputs, tmp_path / "run", 1, *scm_only, "--train-iters", "3")
    assert [r["iteration"] for r in first] == [1, 2, 3]
    assert all("loss/fake_score" not in r for r in compared(first))
    resumed = _run(inputs, tmp_path / "run", 1, *scm_only)
    assert [r["iteration"] for r in resumed] == list(range(1, ITERS + 1))
    assert all(math.isfinite(v) for r in compared(resumed) for v in r.values())
    straight = _run(inputs, tmp_path / "straight", 1, *scm_only)
    assert compared(resumed[3:]) == compared(straight[3:])
