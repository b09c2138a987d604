"""``megatron_rcm.load_model`` on each bad input of the catalogue, in this one process: for each case
the exception's class and message (or what it returned). A per-case alarm ends a case that hangs.

    python load_model_cases.py PATHS.json RESULTS.json
"""

import json
import signal
import sys

from megatron_rcm import load_model
from megatron_rcm.parallel import ParallelConfig, parallel_context


def _cases(p):
    inside = dict(parallel=True)
    return {
        "path-missing": (p["missing"], {}, {}),
        "empty-folder": (p["empty"], {}, {}),
        "malformed-config-json": (p["malformed_json"], {}, {}),
        "config-of-another-model-class": (p["other_class"], {}, {}),
        "truncated-safetensors": (p["truncated"], {}, {}),
        "random-byte-safetensors": (p["random_bytes"], {}, {}),
        "missing-tensor": (p["missing_key"], {}, {}),
        "wrong-tensor-shape": (p["wrong_shape"], {}, {}),
        "distributed-checkpoint-outside-parallel-context": (p["megatron"], {}, {}),
        "unknown-model-prefix": (p["megatron"], {"model_prefix": "nope."}, inside),
        "tracker-names-missing-iteration": (p["bad_tracker"], {}, inside),
        "unknown-config-override": (p["teacher"], {"no_such_option": 1}, {}),
    }


def _alarm(signum, frame):
    raise TimeoutError("hung")


def _call(path, kwargs, where):
    if where.get("parallel"):
        with parallel_context(ParallelConfig()):
            return load_model(path, **kwargs)
    return load_model(path, **kwargs)


def main():
    paths = json.loads(open(sys.argv[1]).read())
    signal.signal(signal.SIGALRM, _alarm)
    results = {}
    for name, (path, kwargs, where) in _cases(paths).items():
        signal.alarm(120)
        try:
            model = _call(path, kwargs, where)
            results[name] = {"error": None, "message": f"returned {type(model).__name__}"}
        except Exception as e:
            results[name] = {"error": [c.__name__ for c in type(e).__mro__], "message": str(e)}
        finally:
            signal.alarm(0)
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
