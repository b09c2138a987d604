"""NCCL: the tiny config through megatron's DistributedOptimizer trains, saves and resumes exactly
(in --deterministic-mode), and resumes at another TP x DP layout with the same global batch.
On 4 GPUs (the issue's check): TP=2 x DP=2, resumed at TP=1 x DP=4. On 2 GPUs: TP=1 x DP=2,
resumed at TP=2 x DP=1.

On 4 x H200 (2026-11-27) the first run of this test found a resume that was not exact although the
straight run repeated itself bit for bit: the first update after the resume used a step counter
that megatron's loader had shared between all parameters (fixed in ``unshare_steps``). With the
fix it passed on 2 x H200 (again at 2abfd28, with the bf16 test) and on 4 x H200 (7205aef). The bf16
test, which checked only finite losses then, now asks for an exact resume in deterministic mode as
well; it has not run on GPUs in that form.
"""

import math

import pytest
import torch

from .test_pretrain_rcm import ITERS, _checkpoint_at
from .test_pretrain_rcm import _run as _run_quietly
from .tiny_setup import assert_close, compared, make_inputs

GPUS = 4 if torch.cuda.device_count() >= 4 else 2
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")]
# float32 on GPU with another reduction order (TP split, DP reduce-scatter)
GPU_LAYOUT_RTOL = 1e-4
DETERMINISTIC = ["--deterministic-mode"]
# (straight and same-layout resume, resume at another layout): the same global batch at both
LAYOUTS = {
    4: (["--tensor-model-parallel-size", "2", "--micro-batch-size", "2"],
        ["--tensor-model-parallel-size", "1", "--micro-batch-size", "1"]),
    2: (["--tensor-model-parallel-size", "1", "--micro-batch-size", "1"],
        ["--tensor-model-parallel-size", "2", "--micro-batch-size", "2"]),
}[GPUS]


def _run(inputs, folder, nproc, *extra):
    """_run, printing each run's losses as it ends (pytest -s): a call cut off by its time limit
    still shows the runs it finished."""
    records = _run_quietly(inputs, folder, nproc, *extra)
    print(f"\n{folder.name} ({' '.join(extra)}): {compared(records)}", flush=True)
    return records


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


def _straight_and_exact_resume(inputs, folder, flags):
    """A straight run, then one resumed from its iteration-3 checkpoint with the same flags, which
    must log the same numbers bit for bit; returns the straight run's records."""
    straight = _run(inputs, folder / "straight", GPUS, *flags)
    assert [r["iteration"] for r in straight] == list(range(1, ITERS + 1))
    assert all(math.isfinite(v) for r in compared(straight) for v in r.values())
    _checkpoint_at(folder / "straight" / "ckpt", 3, folder / "same" / "ckpt")
    same = compared(_run(inputs, folder / "same", GPUS, *flags))
    if same != compared(straight[3:]):
        # tell a resume that loses state from a run that does not repeat itself
        again = compared(_run(inputs, folder / "again", GPUS, *flags))
        pytest.fail(f"resumed {same}\n!= straight {compared(straight[3:])};\na second straight run "
                    f"{'repeats' if again == compared(straight) else 'differs: ' + repr(again)}")
    return straight


def test_distributed_optimizer_resumes_exactly_and_at_another_layout(inputs, tmp_path):
    first, other = (layout + DETERMINISTIC for layout in LAYOUTS)
    straight = _straight_and_exact_resume(inputs, tmp_path, first)
    _checkpoint_at(tmp_path / "straight" / "ckpt", 3, tmp_path / "other" / "ckpt")
    resumed_other = _run(inputs, tmp_path / "other", GPUS, *other)
    assert_close(resumed_other, straight[3:], GPU_LAYOUT_RTOL)


def test_bf16_with_fp32_master_weights_resumes_exactly(inputs, tmp_path):
    """bf16 parameters and attention (SDPA's deterministic kernels: FlashAttention-4 stays off in this
    mode), fp32 master weights and Adam states in the distributed optimizer's checkpoint."""
    _straight_and_exact_resume(inputs, tmp_path, [*LAYOUTS[0], "--bf16", *DETERMINISTIC])
