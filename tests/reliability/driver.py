"""Run one entry point script on several command lines in this process (as ``python SCRIPT ARGS``
would, ``__main__`` included) and record, for each, the exit status and everything written to
stdout and stderr (file descriptors 1 and 2, so C-level output counts too). A per-case alarm ends
a case that hangs.

    python driver.py SCRIPT CASES.json RESULTS.json     # CASES: [{"id": ..., "argv": [...]}, ...]

Tests call ``run_cases``: one process per script, so torch and megatron-core are imported once.
"""

import contextlib
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

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


def run_cases(script, cases, work, env=None, timeout=400):
    """{case id: {"status", "stdout", "stderr"}} of ``script`` (a path) on each ``{"id", "argv"}`` of
    ``cases``, all in one process started in the repository root; ``work``: a folder for the lists."""
    work = Path(work)
    cases_path, results_path = work / f"{Path(script).stem}.cases.json", work / f"{Path(script).stem}.results.json"
    cases_path.write_text(json.dumps(list(cases)))
    subprocess.run([sys.executable, __file__, str(script), str(cases_path), str(results_path)],
                   cwd=Path(__file__).resolve().parents[2], env=env, timeout=timeout, check=True)
    return json.loads(results_path.read_text())


@contextlib.contextmanager
def _captured(fd, stream):
    with tempfile.TemporaryFile() as file:
        saved = os.dup(fd)
        os.dup2(file.fileno(), fd)
        text = {}
        try:
            yield text
        finally:
            stream.flush()
            os.dup2(saved, fd)
            os.close(saved)
            file.seek(0)
            text["text"] = file.read().decode(errors="replace")


def main():
    script, cases_path, results_path = sys.argv[1:4]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as ``python SCRIPT`` sets it: a tool imports its siblings
    signal.signal(signal.SIGALRM, _alarm)
    results = {}
    for case in json.loads(open(cases_path).read()):
        with _captured(1, sys.stdout) as out, _captured(2, sys.stderr) as err:
            signal.alarm(CASE_SECONDS)
            try:
                status = _run(script, case["argv"])
            finally:
                signal.alarm(0)
        results[case["id"]] = {"status": status, "stdout": out["text"], "stderr": err["text"]}
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
