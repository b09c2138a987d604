"""The README's main command: the Moving Digits demo runs end to end (a few iterations here)."""

import json
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio

from megatron_rcm.evaluation.digits import HEADER_HEIGHT, LABEL_WIDTH

ROOT = Path(__file__).resolve().parents[2]


def test_demo_distils_samples_and_writes_gif_and_metrics(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "demo_moving_digits.py"), "--work", str(tmp_path),
                          "--iters", "4"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"teacher, 50 steps, CFG 2.5", "student, 1 step", "student, 2 steps", "student, 4 steps"}
    assert metrics["teacher, 50 steps, CFG 2.5"]["direction_acc"] > 0.9  # the shipped teacher follows prompts
    frames = imageio.mimread(tmp_path / "side_by_side.gif")
    assert len(frames) == 8 and frames[0].shape[:2] == (HEADER_HEIGHT + 4 * 16 * 4, LABEL_WIDTH + 8 * 16 * 4)
    labels = frames[0][..., 0] if frames[0].ndim == 3 else frames[0]
    # text in each row's label and each column's header, nothing in the corner
    assert all(labels[HEADER_HEIGHT + 64 * r: HEADER_HEIGHT + 64 * (r + 1), :LABEL_WIDTH].max() > 128 for r in range(4))
    assert all(labels[:HEADER_HEIGHT, LABEL_WIDTH + 64 * c: LABEL_WIDTH + 64 * (c + 1)].max() > 128 for c in range(8))
    assert labels[:HEADER_HEIGHT, :LABEL_WIDTH].max() == 0
    assert "sampling 160 videos: teacher, 50 steps, CFG 2.5" in run.stderr and "tools/eval_digits.py --model" in run.stdout


def _demo(work, *flags):
    return subprocess.run([sys.executable, str(ROOT / "examples" / "demo_moving_digits.py"), "--work", str(work),
                           "--nproc", "1", *flags], capture_output=True, text=True, timeout=300)


def test_a_failed_training_ends_in_one_line_and_fresh_starts_over(tmp_path):
    old = tmp_path / "ckpt" / "iter_0000100"
    old.mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "negative_prompt.pt").write_text("not a tensor")  # the trainer refuses it
    run = _demo(tmp_path, "--iters", "1")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"demo: examples/pretrain_rcm.py failed (its error is above); if {tmp_path / 'ckpt'} holds a run with "
        f"other settings (an older demo), --fresh starts over (make demo DEMO_FLAGS=--fresh)")
    assert old.exists()  # nothing is deleted without --fresh
    run = _demo(tmp_path, "--iters", "1", "--fresh")
    assert not old.exists() and run.stderr.strip().splitlines()[-1] == (
        "demo: examples/pretrain_rcm.py failed (its error is above)")


def test_wrong_sizes_end_in_one_line_before_anything_is_written(tmp_path):
    for flags, message in ((["--nproc", "0"], "argument --nproc: expected an integer >= 1, got '0'"),
                           (["--iters", "-3"], "argument --iters: expected an integer >= 1, got '-3'"),
                           (["--iters", "many"], "argument --iters: expected an integer >= 1, got 'many'")):
        run = _demo(tmp_path / "work", *flags)
        assert run.returncode == 2 and run.stderr.strip().splitlines() == [
            f"demo: error: {message} (see --help)"], run.stderr
        assert not (tmp_path / "work").exists()


def test_a_work_folder_that_cannot_be_made_ends_in_one_line(tmp_path):
    (tmp_path / "file").write_text("kept")
    for work in (tmp_path / "file", tmp_path / "file" / "work"):
        run = _demo(work)
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert run.stderr.startswith(f"demo: error: --work {work} cannot be made a folder (")
    assert (tmp_path / "file").read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["file"]
