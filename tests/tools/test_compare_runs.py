"""tools/compare_runs.py on bench_train output: each tree's mean over runs, its spread and its ratio to
the first tree; runs without whole-cycle means are counted and left out; a file without any is refused.
And `gpu_runs.sh ab`, which makes such files, refuses a wrong base tree at once."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import compare_runs  # noqa: E402  (tools/ is not a package)


def _run_output(student, critic, mfu_scale=100.0, cycle=True):
    """What one bench_train run prints: the trainer's progress lines, then its JSON summary."""
    lines = [f"iter {i}/10 | {'student' if i % 2 else 'fake_score'} | 2.50 s/it" for i in range(1, 11)]
    summary = {"student_seconds": student, "fake_score_seconds": critic, "first_student_seconds": 20.5}
    if cycle:
        summary.update(student_cycle_seconds=student, student_cycle_mfu=mfu_scale / student,
                       fake_score_cycle_seconds=critic, fake_score_cycle_mfu=mfu_scale / critic)
    return "\n".join(lines + [json.dumps(summary)]) + "\n"


def test_means_spread_and_ratios(tmp_path):
    base, new = tmp_path / "base.log", tmp_path / "new.log"
    base.write_text(_run_output(8.6, 3.3) + _run_output(8.4, 3.1))
    # a run cut before its summary, and a run too short for cycle means: both left out
    new.write_text(_run_output(8.2, 3.0) + "iter 1/10 | student | 60.0 s/it\n" + _run_output(8.0, 3.2, cycle=False)
                   + _run_output(8.4, 3.2))
    rows = compare_runs.summarize({name: compare_runs.runs_of(path) for name, path in (("base", base), ("new", new))})
    assert [(r["tree"], r["runs"], r["left_out"]) for r in rows] == [("base", 2, 0), ("new", 2, 2)]
    assert rows[0]["student_seconds"] == pytest.approx(8.5) and rows[1]["student_seconds"] == pytest.approx(8.3)
    assert (rows[1]["student_min"], rows[1]["student_max"]) == (8.2, 8.4)
    assert rows[1]["student_ratio"] == pytest.approx(8.5 / 8.3) and rows[0]["student_ratio"] == 1
    assert rows[1]["fake_score_ratio"] == pytest.approx(3.2 / 3.1)
    assert rows[1]["student_mfu"] == pytest.approx((100 / 8.2 + 100 / 8.4) / 2)
    table = compare_runs.table(rows)
    assert "| new | 2 (2 left out) | 8.300 (8.200-8.400) | 1.0241 |" in table


def test_a_file_without_a_whole_run_is_refused_in_one_line(tmp_path):
    short = tmp_path / "short.log"
    short.write_text(_run_output(8.0, 3.0, cycle=False))
    result = subprocess.run([sys.executable, "tools/compare_runs.py", f"base={short}"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"compare_runs: error: '{short}' holds no bench_train run with whole-cycle means (1 without them); "
        "run bench_train with --iters 10 or more, to its end"]


def test_the_json_rows_are_written_whole(tmp_path):
    base, out = tmp_path / "base.log", tmp_path / "rows.json"
    base.write_text(_run_output(8.5, 3.2))
    result = subprocess.run([sys.executable, "tools/compare_runs.py", f"base={base}", "--json", str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [(r["tree"], r["runs"], r["student_seconds"]) for r in rows] == [("base", 1, 8.5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.log", "rows.json"]  # no temporary left behind


@pytest.mark.parametrize("base", [None, "/no/such/folder", "docs"], ids=["unset", "missing", "not_a_checkout"])
def test_gpu_runs_ab_refuses_a_wrong_base_at_once(base, tmp_path):
    """Before installing anything or making its log folder."""
    env = {k: v for k, v in os.environ.items() if k != "AB_BASE"}
    if base is not None:
        env["AB_BASE"] = base
    env["OUT"] = str(tmp_path / "logs")
    result = subprocess.run(["bash", "tools/gpu_runs.sh", "ab"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ab: set AB_BASE to the folder of a checkout of the base tree (with tools/bench_train.py)"]
    assert not (tmp_path / "logs").exists()


def test_gpu_runs_refuses_an_unknown_phase_at_once(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "logs"))
    result = subprocess.run(["bash", "tools/gpu_runs.sh", "cold-start"], cwd=ROOT, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("usage: bash tools/gpu_runs.sh tests|") and "|coldstart|" in line
    assert not (tmp_path / "logs").exists()
