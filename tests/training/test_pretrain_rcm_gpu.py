"""4 GPUs, NCCL: the tiny config at TP=2 x DP=2 through megatron's DistributedOptimizer trains,
saves and resumes exactly (in --deterministic-mode), and resumes at TP=1 x DP=4 (same global batch).

On 4 x H200 (2026-11-27): without --deterministic-mode the resumed run trained, and its first
fake-score loss matched the straight run's to 2.3e-10 relative, not bit for bit; the test with the
flag, the TP=1 x DP=4 resume and the bf16 test have not run on GPUs yet.
"""

import math

import pytest
import torch

from .test_pretrain_rcm import ITERS, _assert_close, _checkpoint_at, _losses, _run
from .tiny_setup import make_inputs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 4, reason="needs 4 GPUs")]
# float32 on GPU with another reduction order (TP split, DP reduce-scatter); not yet measured
GPU_LAYOUT_RTOL = 1e-4
# global batch 4 at both layouts (a resumed run must keep the global batch)
TP2_DP2 = ["--tensor-model-parallel-size", "2", "--micro-batch-size", "2", "--deterministic-mode"]
TP1_DP4 = ["--tensor-model-parallel-size", "1", "--micro-batch-size", "1", "--deterministic-mode"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


def test_distributed_optimizer_resumes_exactly_and_at_another_layout(inputs, tmp_path):
    straight = _run(inputs, tmp_path / "straight", 4, *TP2_DP2)
    assert [r["iteration"] for r in straight] == list(range(1, ITERS + 1))
    assert all(math.isfinite(v) for r in _losses(straight) for v in r.values())

    _checkpoint_at(tmp_path / "straight" / "ckpt", 3, tmp_path / "same" / "ckpt")
    same = _losses(_run(inputs, tmp_path / "same", 4, *TP2_DP2))
    _checkpoint_at(tmp_path / "straight" / "ckpt", 3, tmp_path / "dp4" / "ckpt")
    dp4 = _run(inputs, tmp_path / "dp4", 4, *TP1_DP4)
    if same != _losses(straight[3:]):
        # tell a resume that loses state from a run that does not repeat itself
        again = _losses(_run(inputs, tmp_path / "again", 4, *TP2_DP2))
        pytest.fail(f"resumed {same}\n!= straight {_losses(straight[3:])};\na second straight run "
                    f"{'repeats' if again == _losses(straight) else 'differs: ' + repr(again)}")
    _assert_close(dp4, straight[3:], GPU_LAYOUT_RTOL)


def test_bf16_with_fp32_master_weights_trains_and_resumes(inputs, tmp_path):
    # finite and resumable, not exact: the bf16 attention kernels need no deterministic mode here
    bf16 = [*TP2_DP2, "--bf16", "--no-deterministic-mode"]
    records = _run(inputs, tmp_path, 4, *bf16, "--train-iters", "3")
    assert all(math.isfinite(v) for r in _losses(records) for v in r.values())
    resumed = _run(inputs, tmp_path, 4, *bf16)
    assert [r["iteration"] for r in resumed] == [4, 5, 6]
    assert all(math.isfinite(v) for r in _losses(resumed) for v in r.values())
