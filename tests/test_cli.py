"""megatron_rcm.cli: how an entry point's errors and interrupts end."""

import pytest

from megatron_rcm import cli


def _ends(capsys, raiser, errors=(ValueError,)):
    with pytest.raises(SystemExit) as exit_info:
        with cli.one_line_errors("tool", errors):
            raiser()
    return exit_info.value.code, capsys.readouterr().err.splitlines()


def _cleanup_fails_while_interrupted():
    try:
        raise KeyboardInterrupt
    finally:  # as torch.save's zip writer, closing a half-written file mid-interrupt
        raise RuntimeError("unexpected pos 704 vs 598")


def _listed_error_while_interrupted():
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise ValueError("bad value") from None  # `from None` hides it from tracebacks, not __context__


def test_interrupts_and_listed_errors_end_in_one_line(capsys):
    def interrupted():
        raise KeyboardInterrupt

    def listed():
        raise ValueError("bad --size 7: use a multiple of 8")

    assert _ends(capsys, interrupted) == (130, ["tool: error: interrupted"])
    assert _ends(capsys, _cleanup_fails_while_interrupted) == (130, ["tool: error: interrupted"])
    assert _ends(capsys, _listed_error_while_interrupted) == (130, ["tool: error: interrupted"])
    assert _ends(capsys, listed) == (1, ["tool: error: bad --size 7: use a multiple of 8"])


def test_an_unlisted_error_is_a_bug_and_keeps_its_traceback():
    with pytest.raises(RuntimeError, match="a bug"):
        with cli.one_line_errors("tool", (ValueError,)):
            raise RuntimeError("a bug")


SWALLOWING_WRITER = """
import os, signal, sys, time
from pathlib import Path
from megatron_rcm import cli
from megatron_rcm.atomic_output import atomic_output_dir
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job inherits it
cli.interrupt_on_signals()
with cli.one_line_errors("tool", (OSError,)):
    with atomic_output_dir(Path(sys.argv[1])) as tmp:
        (tmp / "part").write_text("half")
        try:
            os.kill(os.getpid(), getattr(signal, sys.argv[2]))
            time.sleep(5)
        except BaseException:  # a library that records the interrupt as an error and goes on
            pass
        (tmp / "rest").write_text("more")
print("finished")
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_caught_by_a_library_still_leaves_no_output(tmp_path, sig):
    import subprocess
    import sys

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", SWALLOWING_WRITER, str(out), sig], capture_output=True, text=True,
                         timeout=120)
    assert (run.returncode, run.stderr.strip().splitlines(), run.stdout) == (130, ["tool: error: interrupted"], "")
    assert list(tmp_path.iterdir()) == []


LOSING_READER = """
import os, signal, sys, time
from megatron_rcm import cli
cli.interrupt_on_signals()
with cli.one_line_errors("tool", (ValueError,)):
    lost = False
    try:
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        time.sleep(5)
    except KeyboardInterrupt:  # as safetensors reading a tensor: the interrupt becomes an error of its own
        lost = True
    if lost:
        raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'")
print("finished")
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_a_library_turned_into_its_own_error_still_ends_as_interrupted(sig):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", LOSING_READER, sig], capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stderr.strip().splitlines(), run.stdout) == (130, ["tool: error: interrupted"], "")


@pytest.mark.parametrize("kind, good, bad", [
    (cli.positive_int, {"1": 1, "12": 12}, ["0", "-3", "1.5", "two", ""]),
    (cli.non_negative_int, {"0": 0, "7": 7}, ["-1", "0.5", "x"]),
    (cli.positive_float, {"0.5": 0.5, "3": 3.0, "1e-4": 1e-4}, ["0", "-1e-3", "inf", "nan", "fast"]),
])
def test_argument_types_take_what_they_say_and_name_what_they_refuse(kind, good, bad):
    import argparse

    assert {text: kind(text) for text in good} == good
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"got {text!r}"):
            kind(text)
