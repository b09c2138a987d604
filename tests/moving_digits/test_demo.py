"""The README's main command: the Moving Digits demo runs end to end (a few iterations here)."""

import json
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio

ROOT = Path(__file__).resolve().parents[2]


def test_demo_distils_samples_and_writes_gif_and_metrics(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "demo_moving_digits.py"), "--work", str(tmp_path),
                          "--iters", "4"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"teacher, 50 steps, CFG 2.5", "student, 1 step", "student, 2 steps", "student, 4 steps"}
    assert metrics["teacher, 50 steps, CFG 2.5"]["direction_acc"] > 0.9  # the shipped teacher follows prompts
    frames = imageio.mimread(tmp_path / "side_by_side.gif")
    assert len(frames) == 8 and frames[0].shape[:2] == (4 * 16 * 4, 8 * 16 * 4)
