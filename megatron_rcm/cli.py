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
import sys
import traceback

__all__ = ["INTERRUPTED_EXIT_STATUS", "ArgumentParser", "add_debug_flag", "fail", "one_line_errors"]

INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``prog: error: ... (see --help)``)
    instead of the usage text followed by the error; exit status 2 as argparse's."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # a misspelt flag is an error, not a guess
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_debug_flag(parser):
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")


def fail(prog, message, status=1, debug=False):
    """Print ``prog: error: message`` on one line (and the current traceback with ``debug``), exit."""
    if debug:
        traceback.print_exc()
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(status)


@contextlib.contextmanager
def one_line_errors(prog, errors, debug=False):
    """``errors`` (exception classes) raised in the block become ``fail(prog, str(error))``; Ctrl-C
    becomes ``prog: error: interrupted`` with status 130 (cleanup code in the block still runs)."""
    try:
        yield
    except errors as e:
        fail(prog, str(e) or type(e).__name__, 1, debug)
    except KeyboardInterrupt:
        fail(prog, "interrupted", INTERRUPTED_EXIT_STATUS, debug)
