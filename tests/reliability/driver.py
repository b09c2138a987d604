"""Run one entry point script on several command lines in this process (as ``python SCRIPT ARGS``
would, ``__main__`` included) and record, for each, the exit status and everything written to
stderr (file descriptor 2, so C-level output counts too). A per-case alarm ends a case that hangs.

    python driver.py SCRIPT CASES.json RESULTS.json     # CASES: [{"id": ..., "argv": [...]}, ...]
"""

import json
import os
import runpy
import signal
import sys
import tempfile
import traceback

CASE_SECONDS = 120


class _Hung(BaseException):
    pass


def _alarm(signum, frame):
    raise _Hung()


def _run(script, argv):
    sys.argv = [script, *argv]
    try:
        runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)  # sys.exit("message"), as the interpreter prints it
        return 1
    except _Hung:
        return "hung"
    except BaseException:
        traceback.print_exc()
        return "raised"


def main():
    script, cases_path, results_path = sys.argv[1:4]
    signal.signal(signal.SIGALRM, _alarm)
    results = {}
    for case in json.loads(open(cases_path).read()):
        with tempfile.TemporaryFile() as err:
            saved = os.dup(2)
            os.dup2(err.fileno(), 2)
            signal.alarm(CASE_SECONDS)
            try:
                status = _run(script, case["argv"])
            finally:
                signal.alarm(0)
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
            err.seek(0)
            results[case["id"]] = {"status": status, "stderr": err.read().decode(errors="replace")}
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
