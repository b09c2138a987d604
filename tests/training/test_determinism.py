"""``--deterministic-mode``'s switches, in a fresh process (they are process-wide): torch's
deterministic algorithms, and the cuBLAS and NCCL variables, an already set one kept."""

import json
import os
import subprocess
import sys

SCRIPT = """
import json, os, torch
from megatron_rcm.training.determinism import enable_deterministic_mode
before = torch.are_deterministic_algorithms_enabled()
enable_deterministic_mode()
print(json.dumps({"before": before, "after": torch.are_deterministic_algorithms_enabled(),
                  "env": [os.environ["CUBLAS_WORKSPACE_CONFIG"], os.environ["NCCL_ALGO"]]}))
"""


def test_the_mode_turns_on_deterministic_algorithms_and_keeps_a_set_variable():
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    env["NCCL_ALGO"] = "Tree"
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    flags = json.loads(result.stdout.splitlines()[-1])
    assert flags == {"before": False, "after": True, "env": [":4096:8", "Tree"]}
