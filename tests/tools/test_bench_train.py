"""tools/bench_train.py's mean over whole cycles of rollout lengths (the timing itself needs a GPU)."""

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import bench_train  # noqa: E402

from megatron_rcm.diffusion.few_step import MAX_STEPS  # noqa: E402
from megatron_rcm.losses import rollout_steps  # noqa: E402

# an H200's student iterations of a 14-iteration run (docs/benchmarks.md, call 3 at 73b37cf)
STUDENT = [18.656, 8.553, 9.098, 9.647, 7.960, 8.515, 9.039]


def test_the_cycle_mean_takes_each_rollout_length_once_and_leaves_out_the_first_iteration():
    used = list(range(len(STUDENT)))[-MAX_STEPS:]
    assert sorted(rollout_steps(k) for k in used) == list(range(1, MAX_STEPS + 1))
    assert bench_train.cycle_mean(STUDENT, MAX_STEPS) == pytest.approx(statistics.fmean(STUDENT[k] for k in used))
    two_cycles = STUDENT + [8.0, 8.6, 9.1, 9.6]
    assert bench_train.cycle_mean(two_cycles, MAX_STEPS) == pytest.approx(statistics.fmean(two_cycles[3:]))


@pytest.mark.parametrize("n", [0, 1, MAX_STEPS])
def test_no_cycle_mean_without_a_whole_cycle_after_the_first_iteration(n):
    assert bench_train.cycle_mean(STUDENT[:n], MAX_STEPS) is None
