"""examples/distill_2d.py --quick runs and distils: a 1-step student beats the teacher's 1-step Euler."""

import json
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "examples" / "distill_2d.py"


@pytest.mark.parametrize("method", ["scm", "rcm"])
def test_quick_distillation_beats_one_euler_step(method):
    result = subprocess.run([sys.executable, str(SCRIPT), "--method", method, "--quick"],
                            capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    distance = report["energy_distance"]
    assert set(distance) == {f"student_{n}step" for n in (1, 2, 4)} | {
        f"teacher_euler_{n}step" for n in (1, 4, 50)}
    assert distance["teacher_euler_50step"] < 0.02
    assert distance["student_1step"] < 0.8 * distance["teacher_euler_1step"]
