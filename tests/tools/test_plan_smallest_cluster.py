"""tools/plan.py names, when nothing fits, a cluster that the same request with its --gpus then
plans. With --global-batch-size fixed it had named clusters of another batch (8 GPUs at DP 1 for
a request of 16 GPUs at global batch 4), which the same flags refuse or do not fit."""

import json

from tests.generation.common import script

plan = script("tools/plan.py")
BASE = ["--model", "wan2.1-t2v-14b", "--gpu-memory-gib", "80"]


def _plan(capsys, *flags):
    status = plan.main([*BASE, *flags, "--json"])
    return status, json.loads(capsys.readouterr().out)


def test_the_named_cluster_keeps_a_fixed_global_batch(capsys):
    status, result = _plan(capsys, "--gpus", "16", "--global-batch-size", "4")
    smallest = result["smallest_cluster"]
    assert status == 1 and smallest["dp"] == 4 and smallest["gpus"] > 16
    status, bigger = _plan(capsys, "--gpus", str(smallest["gpus"]), "--nodes", str(smallest["gpus"] // 8),
                           "--global-batch-size", "4")
    assert status == 0 and bigger["layouts"][0]["peak_memory_gib"] == smallest["peak_memory_gib"]


def test_a_batch_that_fits_nowhere_is_said_to(capsys):
    flags = ["--gpus", "8", "--tp", "4", "--cp", "2", "--cp-mode", "p2p", "--global-batch-size", "1"]
    assert plan.main([*BASE, *flags]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "DP 2" in last and "at global batch 2: none fits at --global-batch-size 1" in last
