"""One GPU (NCCL, megatron's DistributedOptimizer): keeping the EMA slice and the teacher in
pinned host memory (--offload-ema, --offload-teacher) changes no number of the run, losses and
final EMA alike, in --deterministic-mode."""

import pytest
import torch

from .test_pretrain_rcm import _final_ema, _losses, _run
from .tiny_setup import make_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]


def test_offloads_change_no_number(tmp_path):
    inputs = make_inputs(tmp_path / "inputs")
    plain = _run(inputs, tmp_path / "plain", 1, "--deterministic-mode")
    offloaded = _run(inputs, tmp_path / "offloaded", 1, "--deterministic-mode", "--offload-ema", "--offload-teacher")
    assert _losses(offloaded) == _losses(plain)
    ema, plain_ema = _final_ema(tmp_path / "offloaded"), _final_ema(tmp_path / "plain")
    assert ema.keys() == plain_ema.keys() and all(torch.equal(ema[k].cpu(), plain_ema[k].cpu()) for k in ema)
