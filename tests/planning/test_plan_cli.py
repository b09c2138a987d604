"""tools/plan.py: the issue's two requests, and one-line refusals of impossible ones."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import plan  # noqa: E402

from megatron_rcm.planning import Cluster, usable_gib  # noqa: E402

BASE = ["--model", "wan2.1-t2v-14b", "--height", "480", "--width", "832", "--frames", "81"]


def test_14b_on_8_gpus_of_80_gib_prints_layouts_that_fit_best_first(capsys):
    assert plan.main(BASE + ["--gpus", "8", "--gpu-memory-gib", "80", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    layouts = result["layouts"]
    assert result["fits"] and layouts
    for row in layouts:
        assert row["tp"] * row["cp"] * row["dp"] == 8
        assert row["fits"] and 0 < row["peak_memory_gib"] <= usable_gib(Cluster(8, 80))
        assert row["student_seconds"] > row["critic_seconds"] > 0
    speeds = [row["samples_per_second"] for row in layouts]
    assert speeds == sorted(speeds, reverse=True)


def test_nothing_fits_on_one_24_gib_gpu(capsys):
    assert plan.main(BASE + ["--gpus", "1", "--gpu-memory-gib", "24"]) == 1
    out = capsys.readouterr().out
    assert "nothing fits" in out


def test_the_smallest_cluster_is_named_when_a_larger_one_fits(capsys):
    assert plan.main(BASE + ["--gpus", "1", "--gpu-memory-gib", "80", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["layouts"] == [] and result["least_memory"]["peak_memory_gib"] > 80
    smallest = result["smallest_cluster"]
    assert smallest["fits"] and smallest["gpus"] > 1
    # and planning that cluster finds it
    assert plan.main(BASE + ["--gpus", str(smallest["gpus"]), "--gpu-memory-gib", "80", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layouts"][0]["peak_memory_gib"] == smallest["peak_memory_gib"]


@pytest.mark.parametrize("flags, message", [
    (["--tp", "3"], "40 attention heads are not divisible by TP 3"),
    (["--gpus", "512", "--cp", "512"], "cannot be split over CP 512"),
    (["--gpus", "4096", "--global-batch-size", "2"], "more than this model can use"),
    (["--frames", "80"], "must be 4k + 1"),
    (["--width", "830"], "must be a multiple of 16"),
    (["--gpus", "12"], "do not fill whole nodes"),
])
def test_impossible_requests_are_refused_in_one_line(capsys, flags, message):
    argv = BASE + ["--gpus", "8", "--gpu-memory-gib", "80"] + flags
    with pytest.raises(SystemExit) as exit_info:
        plan.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
