"""The metrics of an iteration on 2 data-parallel gloo ranks: loss terms averaged over the ranks and
counts of non-finite samples summed (the trainer's logs only ever show counts of 0); rank 0 alone
appends JSON lines, writes TensorBoard scalars at their iteration (the finite numbers only) and
prints a progress line every --log-interval iterations and at the last."""

import contextlib
import io
import json

import torch
import torch.distributed as dist
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.testing import run_distributed
from megatron_rcm.training.logger import MetricsLogger, reduce_diagnostics


def _diagnostics(rank):
    g = torch.Generator().manual_seed(rank)
    return {"loss/scm": torch.randn((), generator=g), "student/nonfinite_samples": torch.tensor(float(rank + 2))}


def _log_on_each_rank(jsonl, tensorboard):
    with parallel_context(ParallelConfig()):
        reduced = reduce_diagnostics(_diagnostics(dist.get_rank()))
        logger = MetricsLogger(jsonl, tensorboard, log_interval=2)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            for iteration in (1, 2, 3):
                logger.log(iteration, {"network": "student", "loss/student": 0.25 * iteration, "seconds": 0.5,
                                       "tokens_per_second": 16.0 * iteration,
                                       "student/grad_norm": float("nan"), **reduced}, train_iters=3)
        logger.close()
        return reduced, stderr.getvalue().splitlines()


def test_metrics_are_reduced_over_ranks_and_logged_once(tmp_path):
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text('{"iteration": 0}\n')  # a previous run's line, kept: a resumed run appends
    (reduced, printed), (reduced_1, printed_1) = run_distributed(_log_on_each_rank, world_size=2,
                                                                       args=(jsonl, tmp_path / "tb"))
    scm = (_diagnostics(0)["loss/scm"].double() + _diagnostics(1)["loss/scm"].double()).item() / 2
    assert reduced == reduced_1 == {"loss/scm": scm, "student/nonfinite_samples": 5.0}
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2, 3] and records[2]["loss/scm"] == scm
    assert printed == [f"iter 2/3 | student | student 0.5 | scm {scm:.4g} | 0.50 s/it | 32 tok/s",
                       f"iter 3/3 | student | student 0.75 | scm {scm:.4g} | 0.50 s/it | 48 tok/s"]
    assert printed_1 == []
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss/scm", "loss/student", "seconds", "student/nonfinite_samples",
                                                "tokens_per_second"]
    assert [(e.step, e.value) for e in events.Scalars("loss/student")] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert len(list((tmp_path / "tb").iterdir())) == 1  # one event file: rank 0's
