"""What every command-line entry point does with bad input: one line on stderr that says what to
change, a non-zero exit status, and no Python traceback unless ``--debug``.

    parser = cli.ArgumentParser(description=...)      # a bad flag: one line, exit status 2
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    with cli.one_line_errors("prepare_data", (PrepareError, OSError), args.debug):
        run(args)                                     # listed errors: one line, exit status 1

An error that is not listed is a bug: its traceback shows.
"""

import argparse
import contextlib
import math
import os
import signal
import sys
import traceback
import warnings

from .atomic_output import interrupt, interrupted, raised_while_interrupted

__all__ = ["INTERRUPTED_EXIT_STATUS", "ArgumentParser", "add_debug_flag", "fail", "finite_float", "interrupt_on_signals",
           "non_negative_float", "non_negative_int", "one_line_errors", "positive_float", "positive_int",
           "raised_while_interrupted"]

INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, as a shell reports Ctrl-C

# megatron-core says at import that it falls back to plain torch without Transformer Engine and
# Apex (always so on CPU) and warns about its own default CUDA-graph scope; torch's checkpoint
# writer says a single-process save is single-process: noise around the line an entry point prints
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
warnings.filterwarnings("ignore", message="full scope is deprecated")
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
# megatron-core's checkpoint loader calls a torch API that torch deprecates, at every load
warnings.filterwarnings("ignore", message="`load_state_dict` is deprecated", category=FutureWarning)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``prog: error: ... (see --help)``)
    instead of the usage text followed by the error; exit status 2 as argparse's."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # a misspelt flag is an error, not a guess
        kwargs.setdefault("prog", os.path.splitext(os.path.basename(sys.argv[0]))[0])  # as one_line_errors says it
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _integer_at_least(text, low):
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
    return value


def positive_int(text):
    """argparse type: an integer >= 1."""
    return _integer_at_least(text, 1)


def non_negative_int(text):
    """argparse type: an integer >= 0 (counts where 0 means none)."""
    return _integer_at_least(text, 0)


def _float_where(text, holds, wanted):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not holds(value):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def positive_float(text):
    """argparse type: a finite number > 0 (rates, scales, time limits)."""
    return _float_where(text, lambda v: v > 0, "a number > 0")


def non_negative_float(text):
    """argparse type: a finite number >= 0 (weights and thresholds where 0 means off)."""
    return _float_where(text, lambda v: v >= 0, "a number >= 0")


def finite_float(text):
    """argparse type: any finite number (not nan or inf, which float() accepts)."""
    return _float_where(text, lambda v: True, "a finite number")


def add_debug_flag(parser):
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")


def fail(prog, message, status=1, debug=False):
    """Print ``prog: error: message`` on one line (and the current traceback with ``debug``), exit."""
    if debug:
        traceback.print_exc()
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def _interrupt(signum, frame):
    interrupt()


def interrupt_on_signals():
    """SIGINT and SIGTERM raise KeyboardInterrupt and mark the process interrupted: cleanup code
    runs (temporary outputs are removed), ``one_line_errors`` reports ``interrupted``, and no
    temporary output is renamed into place afterwards even where a library caught the exception
    (``atomic_output.interrupt``, which also lets an output being replaced finish its last steps).
    Installed over a SIGINT the process inherited as ignored.
    Not for the trainer, whose SIGTERM means "save and stop" (``training.signals``)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)


@contextlib.contextmanager
def one_line_errors(prog, errors, debug=False):
    """``errors`` (exception classes) raised in the block become ``fail(prog, str(error))``; Ctrl-C
    becomes ``prog: error: interrupted`` with status 130 (cleanup code in the block still runs)."""
    try:
        yield
    except KeyboardInterrupt:
        fail(prog, "interrupted", INTERRUPTED_EXIT_STATUS, debug)
    except Exception as e:
        # a library may also turn the interrupt into an error of its own that keeps no trace of it
        # (safetensors reading a tensor as SIGTERM lands): the process's mark still says so
        if raised_while_interrupted(e) or interrupted():
            fail(prog, "interrupted", INTERRUPTED_EXIT_STATUS, debug)
        if isinstance(e, errors):
            fail(prog, str(e) or type(e).__name__, 1, debug)
        raise
