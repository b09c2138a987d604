"""Faults that appear once training runs, each in a real process of examples/pretrain_rcm.py (or
on 2 gloo ranks): NaN batches skipped on every rank alike then the run stopped, a batch of the
wrong shape, a latest checkpoint that does not load. Each ends by itself with one line on stderr
and no traceback."""

import os
import subprocess
import sys

import pytest
import torch
from megatron.core import dist_checkpointing

from megatron_rcm.data import write_shards
from megatron_rcm.data.latent_shards import ShardFormatError
from megatron_rcm.models.wan import wan_config
from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.testing import run_distributed
from megatron_rcm.training.batch_checks import NonFiniteBatches, NonFiniteDataError, all_finite, check_shapes

from ..training.tiny_setup import LATENT, PRESET, ROOT, SCRIPT, TEXT_LEN, make_inputs, read_jsonl, torchrun_env

pytestmark = pytest.mark.timeout(600)


def _skip_on_rank_one(max_consecutive):
    guard = NonFiniteBatches(max_consecutive)
    with parallel_context(ParallelConfig()):
        rank = torch.distributed.get_rank()
        finite = torch.randn(2, 3)
        nan = finite.clone()
        nan[0, 1] = float("nan")
        decisions = [guard.skip(all_finite(finite)), guard.skip(all_finite(nan if rank == 1 else finite, finite)),
                     guard.skip(all_finite(finite))]
        try:
            for _ in range(max_consecutive + 1):
                guard.skip(all_finite(finite if rank == 1 else torch.full((2,), float("inf"))))
        except NonFiniteDataError as e:
            return decisions, guard.skipped, str(e)
        return decisions, guard.skipped, None


def test_a_nan_batch_on_one_rank_is_skipped_on_every_rank_then_too_many_stop_all():
    results = run_distributed(_skip_on_rank_one, world_size=2, args=(2,))
    for decisions, skipped, error in results:
        assert decisions == [False, True, False] and skipped == 4
        assert error and "3 consecutive batches hold NaN or inf" in error


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


def _train(flags, timeout=300):
    env = dict(torchrun_env(), MASTER_PORT=str(29100 + os.getpid() % 800))
    return subprocess.run([sys.executable, str(SCRIPT), *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_line(result):
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("iter ")]
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


def _nan_data(folder, every, channels=None):
    """12 samples of the tiny setup's shapes (latent channels aside); each ``every``-th latent holds a NaN."""
    config = wan_config(PRESET)

    def samples():
        for i in range(12):
            latent = torch.randn(channels or config.in_channels, *LATENT)
            if every and i % every == 0:
                latent[0, 0, 0, 0] = float("nan")
            yield f"sample{i:08d}", latent, torch.randn(TEXT_LEN, config.text_dim), "a prompt"
    write_shards(folder, samples(), 6)
    return folder


def test_nan_batches_are_skipped_and_counted_then_all_nan_data_stops_the_run(inputs, tmp_path):
    flags = inputs
    some = _train([*flags, "--data-path", str(_nan_data(tmp_path / "some", every=3)), "--train-iters", "4",
                   "--max-skipped-batches", "12", "--log-jsonl", str(tmp_path / "log.jsonl"), "--save",
                   str(tmp_path / "save")])
    assert some.returncode == 0, some.stderr[-3000:]
    records = read_jsonl(tmp_path / "log.jsonl")
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    skipped = records[-1]["data/skipped_nonfinite_batches"]
    assert skipped > 0
    # a skipped batch was consumed: a resume must not read it again (global batch 1)
    progress = dist_checkpointing.load_common_state_dict(str(tmp_path / "save" / "iter_0000004"))["progress"]
    assert (progress["iteration"], progress["consumed_samples"]) == (4, 4 + skipped)
    every = _train([*flags, "--data-path", str(_nan_data(tmp_path / "all", every=1)), "--train-iters", "4"])
    assert "4 consecutive batches hold NaN or inf" in _one_line(every)


def test_a_latest_checkpoint_that_does_not_load_is_refused_naming_the_way_back(inputs, tmp_path):
    save = tmp_path / "save"
    first = _train([*inputs, "--train-iters", "4", "--save", str(save), "--save-interval", "2"])
    assert first.returncode == 0, first.stderr[-3000:]
    for part in (save / "iter_0000004").glob("*.distcp"):
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    again = _train([*inputs, "--train-iters", "6", "--save", str(save)])
    line = _one_line(again)
    assert "iter_0000004 does not load" in line and "write 2 into" in line, line
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "4"  # refused, nothing changed


def test_a_batch_of_the_wrong_shape_stops_the_run_with_the_expected_shape(inputs, tmp_path):
    """Found in the trainer after the data workers started: the run ends (no wait on a worker)."""
    wrong = _nan_data(tmp_path / "wrong", every=0, channels=wan_config(PRESET).in_channels + 1)
    result = _train([*inputs, "--data-path", str(wrong), "--train-iters", "2", "--num-workers", "2"])
    assert "the teacher takes latents [4, T, H, W]" in _one_line(result)


def test_check_shapes_refuses_each_wrong_dimension():
    """Every dimension the student needs is checked: channels, text width, and frames, height and
    width a multiple of the patch (a batch that slips through fails deep inside the model instead)."""
    def check(latent_shape, embed_shape):
        check_shapes(torch.randn(latent_shape), torch.randn(embed_shape), in_channels=4, text_dim=24,
                     patch_size=(1, 2, 2))

    check((2, 4, 3, 6, 8), (2, 5, 24))
    for latent_shape, embed_shape in (((2, 5, 3, 6, 8), (2, 5, 24)), ((2, 4, 3, 5, 8), (2, 5, 24)),
                                      ((2, 4, 3, 6, 7), (2, 5, 24)), ((2, 4, 6, 8), (2, 5, 24)),
                                      ((2, 4, 3, 6, 8), (2, 5, 16)), ((2, 4, 3, 6, 8), (5, 24))):
        with pytest.raises(ShardFormatError, match=r"the teacher takes latents \[4, T, H, W\] with T, H, W multiples "
                                                   r"of \(1, 2, 2\) and embeddings \[L, 24\]"):
            check(latent_shape, embed_shape)
