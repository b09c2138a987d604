"""The command `make demo` prints last is the README's: the interpreter that ran the demo (``make demo``
runs .venv's, which a plain ``python`` may not be), repository paths as typed from the repository,
and the student's export folder. It printed ``python`` and an absolute path to one iteration."""

import re
import sys
from pathlib import Path

from tests.generation.common import script

ROOT = Path(__file__).resolve().parents[2]


def _readme_command():
    return re.search(r"^\.venv/bin/python tools/eval_digits\.py .*$", (ROOT / "README.md").read_text(), re.M).group(0)


def test_the_printed_command_is_the_readmes(monkeypatch):
    demo = script("examples/demo_moving_digits.py")
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "executable", str(ROOT / ".venv" / "bin" / "python"))  # where make installs it
    student = ROOT / "runs" / "demo" / "ckpt" / "ema_student" / "iter_0000800"
    assert demo.eval_command(student) == _readme_command()


def test_paths_outside_the_working_folder_stay_absolute(monkeypatch, tmp_path):
    demo = script("examples/demo_moving_digits.py")
    monkeypatch.chdir(tmp_path)
    command = demo.eval_command(ROOT / "runs" / "demo" / "ckpt" / "ema_student" / "iter_0000800")
    assert f"{ROOT / 'tools' / 'eval_digits.py'} --model {ROOT / 'runs' / 'demo' / 'ckpt' / 'ema_student'} " in command
