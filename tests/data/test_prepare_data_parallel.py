"""tools/prepare_data.py across ranks and crashes: 2 gloo ranks write the bytes 1 rank writes, a
killed run re-run gives the same shards, and the shards train with examples/pretrain_rcm.py."""

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from megatron_rcm.data.latent_shards import LatentShardDataset
from megatron_rcm.testing import run_distributed
from tests.training.tiny_setup import TINY_CONFIG, read_jsonl, torchrun

from .video_files import ROOT, captioned_video, prepare_tool, random_frames

SIZE = ["--height", "16", "--width", "16", "--num-frames", "9"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for i, (name, shape) in enumerate([("a.mp4", (16, 16)), ("b.webm", (24, 32)), ("c.gif", (16, 20)),
                                       ("d.mov", (32, 16)), ("e.mp4", (16, 16))]):
        captioned_video(folder, name, random_frames(10, *shape, seed=i), f"clip {i}: a red fox runs")
    captioned_video(folder, "f.mp4", random_frames(4, 16, 16, seed=9), "too short")  # skipped
    return folder


def _argv(pipeline, videos, output):
    return ["--pipeline", str(pipeline), "--videos", str(videos), "--output", str(output), *SIZE,
            "--samples-per-shard", "2", "--no-progress"]


@pytest.fixture(scope="module")
def reference(pipeline, videos, tmp_path_factory):
    """One uninterrupted run on one process."""
    output = tmp_path_factory.mktemp("reference") / "out"
    assert _run_tool(_argv(pipeline, videos, output)) == [3]  # f.mp4 is skipped
    return output


def _files(folder):
    """Every file of an output folder (progress records included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _tool_rank(argv):
    # one thread on every rank: on CPU the thread count changes how float sums are split
    torch.set_num_threads(1)
    return prepare_tool().main(argv)


def _run_tool(argv, world_size=1):
    """The ranks' exit statuses; one rank runs in this process (on one thread, as the ranks do)."""
    if world_size > 1:
        return run_distributed(_tool_rank, world_size=world_size, args=(argv,), timeout=300)
    threads = torch.get_num_threads()
    try:
        return [_tool_rank(argv)]
    finally:
        torch.set_num_threads(threads)


def _tool_rank_and_its_shards(argv):
    """A rank's exit status and the shards it prepared (the real prepare_shard, its calls recorded)."""
    from megatron_rcm.data import prepare

    shards, real = [], prepare.prepare_shard

    def recorded(output, shard, *args, **kwargs):
        shards.append(shard)
        return real(output, shard, *args, **kwargs)

    prepare.prepare_shard = recorded
    try:
        return _tool_rank(argv), shards
    finally:
        prepare.prepare_shard = real


def test_two_ranks_write_the_bytes_of_one(pipeline, videos, reference, tmp_path):
    """Each rank prepares its own shards (two ranks that each prepared all of them would write the same
    bytes too), and together they write what one process writes."""
    output = tmp_path / "out"
    (status_0, shards_0), (status_1, shards_1) = run_distributed(
        _tool_rank_and_its_shards, world_size=2, args=(_argv(pipeline, videos, output),), timeout=300)
    assert (status_0, status_1) == (3, 0)  # rank 0 reports the skip
    assert sorted(shards_0 + shards_1) == [0, 1, 2] and shards_0 and shards_1
    assert sorted(_files(reference)) == sorted([
        ".progress/shard-000000.json", ".progress/shard-000001.json", ".progress/shard-000002.json",
        "negative_prompt.pt", "prepare.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar",
        "skipped.jsonl"])
    assert _files(output) == _files(reference)


def test_an_interrupted_run_resumes_to_the_same_shards(pipeline, videos, reference, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    for name in (".progress/shard-000001.json", ".progress/shard-000002.json", "shard-000002.tar"):
        (output / name).unlink()
    (output / "shard-000001.tar").write_bytes(b"left by a run killed before its record")
    (output / ".shard-000002.tar.tmp-dead").write_bytes(b"partial")
    done = (output / "shard-000000.tar").stat()
    assert _run_tool(_argv(pipeline, videos, output)) == [3]
    assert _files(output) == _files(reference)
    after = (output / "shard-000000.tar").stat()
    assert (after.st_ino, after.st_mtime_ns) == (done.st_ino, done.st_mtime_ns)  # a finished shard is kept


def test_a_killed_run_rerun_gives_the_same_shards(pipeline, videos, reference, tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, str(ROOT / "tools" / "prepare_data.py"), *_argv(pipeline, videos, output)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    first = output / ".progress" / "shard-000000.json"
    deadline = time.monotonic() + 240
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert first.exists() and not (output / ".progress" / "shard-000002.json").exists()  # killed mid-way
    assert _run_tool(_argv(pipeline, videos, output)) == [3]
    assert _files(output) == _files(reference)


def test_the_shards_train(pipeline, reference, tmp_path):
    log = tmp_path / "log.jsonl"
    torchrun(1, ["--config", str(TINY_CONFIG), "--teacher", str(pipeline), "--data-path",
                 str(reference), "--negative-prompt-embedding", str(reference / "negative_prompt.pt"),
                 "--train-iters", "3", "--log-jsonl", str(log)])
    records = read_jsonl(log)
    assert [r["iteration"] for r in records] == [1, 2, 3]
    losses = [value for r in records for key, value in r.items() if key.startswith("loss/")]
    assert len(losses) >= 5 and all(math.isfinite(v) for v in losses)


@pytest.fixture(scope="module")
def teacher_reference(pipeline, tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    (folder / "prompts.txt").write_text("a red fox runs\ntwo cats sleep\nfish swim through a reef\n")
    argv = ["--pipeline", str(pipeline), "--prompts", str(folder / "prompts.txt"), "--teacher", str(pipeline),
            "--output", str(folder / "out"), *SIZE, "--steps", "2", "--guidance-scale", "3", "--seed", "5",
            "--samples-per-shard", "2", "--no-progress"]
    assert _run_tool(argv) == [0]
    return argv, folder / "out"


def test_teacher_samples_at_tensor_parallel_size_2(teacher_reference, tmp_path):
    argv, reference = teacher_reference
    output = tmp_path / "out"
    argv = [*argv[:argv.index("--output") + 1], str(output), *argv[argv.index("--output") + 2:],
            "--tensor-model-parallel-size", "2"]
    assert _run_tool(argv, world_size=2) == [0, 0]
    # one writer per model-parallel group; its sums run in another order
    assert sorted(_files(output)) == sorted(_files(reference))
    expected, got = LatentShardDataset(reference), LatentShardDataset(output)
    assert len(got) == len(expected) == 3
    for i in range(3):
        torch.testing.assert_close(got[i]["embed"], expected[i]["embed"], rtol=0, atol=0)
        latent, reference_latent = got[i]["latent"], expected[i]["latent"]
        # float32 rounding of the split sums, grown by CFG (x3) over two steps
        assert (latent - reference_latent).abs().max() < 1e-5 * reference_latent.abs().max()
