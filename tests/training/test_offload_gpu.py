"""One GPU (NCCL, megatron's DistributedOptimizer, --deterministic-mode): a run resumed with the
EMA slice and the teacher in pinned host memory (--offload-ema, --offload-teacher) gives the
straight run's losses and final EMA bit for bit, so the offloads change no number, and the EMA,
gathered to host memory for the checkpoint, loads back into a GPU run."""

import pytest
import torch

from .test_pretrain_rcm import _checkpoint_at, _final_ema, _run
from .tiny_setup import compared, make_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]


def test_a_resume_with_offloads_changes_no_number(tmp_path):
    inputs = make_inputs(tmp_path / "inputs")
    straight = _run(inputs, tmp_path / "straight", 1, "--deterministic-mode")
    _checkpoint_at(tmp_path / "straight" / "ckpt", 3, tmp_path / "offloaded" / "ckpt")
    resumed = _run(inputs, tmp_path / "offloaded", 1, "--deterministic-mode", "--offload-ema", "--offload-teacher")
    assert compared(resumed) == compared(straight[3:])
    ema, straight_ema = _final_ema(tmp_path / "offloaded"), _final_ema(tmp_path / "straight")
    assert ema.keys() == straight_ema.keys() and all(torch.equal(ema[k].cpu(), straight_ema[k].cpu()) for k in ema)
