"""tools/digits_study.py's decisions: the validation choice rule, the flags the baselines share, the targets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import digits_study
        yield digits_study
    finally:
        sys.path.remove(str(ROOT / "tools"))


def _eval_json(path, name, fd, acc, diversity=22.0):
    """An eval.json like tools/eval_digits.py's, the same numbers at 1, 2 and 4 steps, two seeds."""
    rows = [{"name": f"{name}, few-step {steps}", "seeds": [100, 101], "digit_acc": [acc, acc], "fd": [fd, fd],
             "direction_acc": [1.0, 1.0], "joint_acc": [acc, acc], "diversity": [diversity, diversity]}
            for steps in (1, 2, 4)]
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_choice_meets_the_most_fd_and_accuracy_targets_then_has_the_lower_fd(study, tmp_path):
    teacher = [{"name": f"teacher, RF Euler {n} steps, CFG 2.5", "digit_acc": [acc], "fd": [fd], "diversity": [23.0]}
               for n, acc, fd in ((50, 0.88, 80.0), (4, 0.84, 135.0))]
    results = {name: _eval_json(tmp_path / f"{name}.json", name, *numbers) for name, numbers in {
        "scm": (300.0, 0.45), "dmd": (1000.0, 0.65, 21.0),
        "scm-dcm0.05": (180.0, 0.50),  # the sCM run "rcm-dcm0.05" is judged against
        "rcm": (700.0, 0.70),            # beats sCM on accuracy only, and DMD on diversity
        "rcm-dmdw3": (1000.0, 0.73),     # the most accurate, as many targets as "rcm", higher FD
        "rcm-dmd-shift5": (250.0, 0.69),  # also beats sCM's FD: one target more
        "rcm-dcm0.05": (200.0, 0.69),  # beats "scm" on both, but its own sCM run ("scm-dcm0.05") on accuracy only
        "rcm-dmdw0.1": (120.0, 0.40, 30.0),  # the lowest FD, below sCM's accuracy; diversity does not count
    }.items()}
    name, why = study.choose(results, teacher)
    assert name == "rcm-dmd-shift5" and "rCM 1-step FD < sCM 1-step FD" in why and "250.0" in why
    del results["rcm-dmd-shift5"]
    assert study.choose(results, teacher)[0] == "rcm-dmdw0.1"  # one target each: the lowest FD
    del results["scm-dcm0.05"]
    assert study.choose(results, teacher)[0] == "rcm-dmdw0.1"  # without its sCM run, "rcm-dcm0.05" is no candidate
    assert study.choose({"rcm": results["rcm"], "dmd": results["dmd"]}, teacher) is None


def test_round_2_pairs_each_rcm_run_with_the_scm_run_of_its_shared_flags(study, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "ABLATIONS", study.ROUNDS[2])
    assert {n for n, (m, _) in study.ROUND_2.items() if m == "rcm"} == {
        n.replace("scm", "rcm", 1) for n, (m, _) in study.ROUND_2.items() if m == "scm"}
    for name in study.ROUND_2:
        if name.startswith("rcm"):
            assert study._baseline(study.ROUND_2, name) == name.replace("rcm", "scm", 1)
    for number in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16):  # every later rCM run has its sCM run too
        monkeypatch.setattr(study, "ABLATIONS", study.ROUNDS[number])
        assert all(study._baseline(study.ABLATIONS, n) for n, (m, _) in study.ABLATIONS.items() if m == "rcm")
    monkeypatch.setattr(study, "ABLATIONS", study.ROUNDS[4])
    assert study._baseline(study.ROUND_4, "rcm-b32-rollout2") == "scm-b32"  # the rollout is DMD's, not shared
    assert study._baseline(study.ROUND_4, "rcm-b32-cfg3.5") == "scm-b32-cfg3.5"  # guidance is shared
    monkeypatch.setattr(study, "ABLATIONS", study.ROUNDS[5])
    assert study._baseline(study.ROUND_5, "rcm-b32-dmdcfg5") == "scm-b32"  # the DMD direction's guidance is not
    monkeypatch.setattr(study, "ABLATIONS", study.ROUNDS[8])
    assert study._baseline(study.ROUND_8, "rcm-b32-pmean0.7") == "scm-b32-pmean0.7"  # sCM's noise levels are shared
    assert study._baseline(study.ROUND_8, "rcm-b32-dcm0.1-dmdw1") == "scm-b32-dcm0.1"
    monkeypatch.setattr(study, "ABLATIONS", study.ROUNDS[2])
    teacher = [{"name": f"teacher, RF Euler {n} steps, CFG 2.5", "digit_acc": [acc], "fd": [fd], "diversity": [23.0]}
               for n, acc, fd in ((50, 0.88, 80.0), (4, 0.84, 135.0))]
    results = {name: _eval_json(tmp_path / f"{name}.json", name, *numbers) for name, numbers in {
        "scm-mid": (90.0, 0.80), "rcm-mid": (95.0, 0.85),  # all 4 targets but the 1-step FD one
        "scm-b32": (300.0, 0.45), "rcm-b32": (150.0, 0.70),  # 2 targets against its own sCM run
    }.items()}
    name, why = study.choose(results, teacher)
    assert name == "rcm-mid" and "3 of" in why and "scm-mid" in why


def _with_4_steps(path, fd, acc):
    report = json.loads(path.read_text())
    report["rows"][2].update(fd=[fd, fd], digit_acc=[acc, acc])
    path.write_text(json.dumps(report))
    return path


def test_runs_that_differ_in_the_later_sampler_times_are_told_apart_at_4_steps(study, tmp_path, monkeypatch):
    """Round 7: the later times leave training, so the 1- and 2-step results, alike; the 4-step FD
    within 1.2x the teacher's, then the 4-step accuracy, decide."""
    monkeypatch.setattr(study, "ABLATIONS", study.ROUNDS[7])
    assert study._baseline(study.ROUND_7, "rcm-b32-rollout2-later1.0-0.5") == "scm-b32-later1.0-0.5"
    assert study.SAMPLER_ONLY["rcm-b32-rollout2-later1.15-0.9"] == "rcm-b32-rollout2"
    assert study.ROUND_7["rcm-b32-rollout2-later1.15-0.9"][1][-4:] == ["--mid-times", "1.23", "1.15", "0.9"]
    assert study.SAMPLER_ONLY["rcm-b32-later1.22-1.21"] == "rcm-b32"  # round 10 re-samples round 9's choice
    assert study.ROUND_10["rcm-b32-later1.22-1.21"][1][-4:] == ["--mid-times", "1.23", "1.22", "1.21"]
    assert "rcm-b32" not in study.SAMPLER_ONLY  # the run they re-sample trains
    # round 14: only the 1-2-step rollouts are re-sampled at other times; the config's 3-step ones train at them
    assert study.SAMPLER_ONLY["rcm-b32-rollout2-later1.2-1.1"] == "rcm-b32-rollout2"
    assert [n for n in study.ROUND_14 if n.startswith("rcm-b32-later")] == []
    assert study.ROUND_14["rcm-b32-rollout2-later1.2-1.1"][1][-6:] == [*study.R2, "--mid-times", "1.23", "1.2", "1.1"]
    teacher = [{"name": f"teacher, RF Euler {n} steps, CFG 2.5", "digit_acc": [acc], "fd": [fd], "diversity": [24.0]}
               for n, acc, fd in ((50, 0.88, 80.0), (4, 0.84, 135.0))]  # 4-step FD bound: 1.2 x 80 = 96
    names = ("b32", "b32-later1.0-0.5", "b32-later1.15-0.9", "b32-later1.2-1.1")
    results = {f"scm-{n}": _eval_json(tmp_path / f"scm-{n}.json", f"scm-{n}", 170.0, 0.60) for n in names}
    for n, fd4, acc4 in zip(names, (80.0, 76.0, 87.0, 98.0), (0.82, 0.84, 0.86, 0.87)):
        rcm = f"rcm-{n.replace('b32', 'b32-rollout2')}"
        results[rcm] = _with_4_steps(_eval_json(tmp_path / f"{rcm}.json", rcm, 86.0 + 1e-6 * fd4, 0.81), fd4, acc4)
    name, why = study.choose(results, teacher)
    assert name == "rcm-b32-rollout2-later1.15-0.9"  # within the bound, the most accurate
    assert "4-step val FD 87.0 (1.2x the teacher's 96.0), accuracy 0.860" in why
    del results["rcm-b32-rollout2-later1.15-0.9"]
    assert study.choose(results, teacher)[0] == "rcm-b32-rollout2-later1.0-0.5"  # 1.2-1.1 is past the bound
    results["rcm-b32-rollout2"] = _eval_json(tmp_path / "lower.json", "rcm-b32-rollout2", 85.0, 0.81)
    assert study.choose(results, teacher)[0] == "rcm-b32-rollout2"  # a lower 2-step FD still comes first


def test_from_round_11_the_4_step_diversity_bar_comes_before_the_4_step_fd_and_accuracy(study, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "ABLATIONS", study.ROUNDS[11])
    assert study.SAMPLER_ONLY["scm-b32-later1.225-1.222"] == "scm-b32"
    teacher = [{"name": f"teacher, RF Euler {n} steps, CFG 2.5", "digit_acc": [acc], "fd": [fd], "diversity": [24.0]}
               for n, acc, fd in ((50, 0.88, 80.0), (4, 0.84, 135.0))]  # bars: FD 96, diversity 0.95 x 24 = 22.8
    results = {}
    for suffix, fd4, acc4, div4 in (("", 80.0, 0.88, 22.0), ("-later1.21-1.17", 85.0, 0.87, 22.9),
                                    ("-later1.22-1.21", 90.0, 0.86, 23.2), ("-later1.225-1.222", 100.0, 0.89, 23.5)):
        scm = f"scm-b32{suffix}"
        results[scm] = _eval_json(tmp_path / f"{scm}.json", scm, 170.0, 0.60)
        rcm = f"rcm-b32{suffix}"
        path = _with_4_steps(_eval_json(tmp_path / f"{rcm}.json", rcm, 86.0, 0.81), fd4, acc4)
        report = json.loads(path.read_text())
        report["rows"][2]["diversity"] = [div4, div4]
        path.write_text(json.dumps(report))
        results[rcm] = path
    assert study.choose(results, teacher, accuracy_first=True)[0] == "rcm-b32"  # rounds 9 and 10: diversity unseen
    name, why = study.choose(results, teacher, accuracy_first=True, diversity_at_4=True)
    assert name == "rcm-b32-later1.21-1.17"  # over the bar and within the FD bound, the most accurate
    assert "diversity 22.9 (0.95x the teacher's 22.8)" in why


def test_from_round_9_the_2_step_accuracy_breaks_ties_within_the_fd_bound(study, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "ABLATIONS", study.ROUNDS[9])
    teacher = [{"name": f"teacher, RF Euler {n} steps, CFG 2.5", "digit_acc": [acc], "fd": [fd], "diversity": [23.0]}
               for n, acc, fd in ((50, 0.88, 80.0), (4, 0.84, 135.0))]  # 2-step FD bound: 1.2 x 80 = 96
    results = {name: _eval_json(tmp_path / f"{name}.json", name, *numbers) for name, numbers in {
        "scm-b32": (170.0, 0.60), "scm-b32-dcm0.1": (200.0, 0.55), "scm-b32-dcm0.15": (200.0, 0.55),
        "rcm-b32": (86.0, 0.80),  # 3 targets: all but the 2-step accuracy
        "rcm-b32-dcm0.1": (82.0, 0.78),  # 3, the lowest FD
        "rcm-b32-dcm0.1-dmdw1": (91.0, 0.83),  # 3, the most accurate within the FD bound
        "rcm-b32-dmdw1": (120.0, 0.86),  # 3: the 2-step accuracy met, the FD bound not
    }.items()}
    assert study.choose(results, teacher)[0] == "rcm-b32-dcm0.1"
    assert study.choose(results, teacher, accuracy_first=True)[0] == "rcm-b32-dcm0.1-dmdw1"
    results["rcm-b32-dcm0.15-dmdw1"] = _eval_json(tmp_path / "all4.json", "rcm-b32-dcm0.15-dmdw1", 95.0, 0.85)
    for accuracy_first in (False, True):  # all 4 targets still come first
        assert study.choose(results, teacher, accuracy_first=accuracy_first)[0] == "rcm-b32-dcm0.15-dmdw1"


def test_from_round_12_the_diversity_against_the_teacher_counts_among_the_targets(study, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "ABLATIONS", study.ROUNDS[12])
    teacher = [{"name": f"teacher, RF Euler {n} steps, CFG 2.5", "digit_acc": [acc], "fd": [fd], "diversity": [23.0]}
               for n, acc, fd in ((50, 0.88, 80.0), (4, 0.84, 135.0))]  # diversity bar: 0.95 x 23 = 21.85
    results = {name: _eval_json(tmp_path / f"{name}.json", name, *numbers) for name, numbers in {
        "scm-b32": (170.0, 0.60, 23.0),
        "rcm-b32": (86.0, 0.86, 21.5),  # all 4 FD/accuracy targets, narrow at every step
        "rcm-b32-dmdw0.85": (90.0, 0.83, 22.0),  # 3 of them, over the diversity bar at every step
        "rcm-b32-rollout4": (88.0, 0.82, 21.9),  # the same 6, less accurate at 2 steps
    }.items()}
    assert study.choose(results, teacher, accuracy_first=True, diversity_at_4=True)[0] == "rcm-b32"
    name, why = study.choose(results, teacher, accuracy_first=True, diversity_at_4=True, diversity_counted=True)
    assert name == "rcm-b32-dmdw0.85" and "meets 6 of the issue's 7" in why
    assert "rCM 4-step diversity >= 0.95x the 50-step teacher's" in why


def test_baselines_share_only_their_part_of_the_chosen_flags(study):
    flags = ["--dmd-weight", "0.3", "--student-update-freq", "5", "--dcm-step", "0.05", "--dmd-shift", "1",
             "--p-mean", "0.7", "--mid-times", "1.2", "0.8", "0.3", "--micro-batch-size", "32", "--student-updates", "800"]
    shared = ["--mid-times", "1.2", "0.8", "0.3", "--micro-batch-size", "32", "--student-updates", "800"]
    assert study.flag_subset(flags, study.SCM_FLAGS) == ["--dcm-step", "0.05", "--p-mean", "0.7", *shared]
    assert study.flag_subset(flags, study.CRITIC_FLAGS) == ["--student-update-freq", "5", "--dmd-shift", "1", *shared]


def test_targets_compare_the_issue_s_numbers(study):
    def row(name, acc, fd, diversity):
        return {"name": name, "digit_acc": [acc], "fd": [fd], "diversity": [diversity]}

    rows = [row("teacher, RF Euler 50 steps, CFG 2.5", 0.87, 80.0, 24.0),
            row("teacher, RF Euler 4 steps, CFG 2.5", 0.85, 150.0, 23.0)]
    for steps, (fd_rcm, fd_scm) in {1: (300.0, 400.0), 2: (95.0, 280.0), 4: (90.0, 100.0)}.items():
        rows += [row(f"rCM, few-step {steps}", 0.86, fd_rcm, 22.5), row(f"sCM only, few-step {steps}", 0.5, fd_scm, 24.0),
                 row(f"DMD only, few-step {steps}", 0.8, 900.0, 22.0)]
    targets = {t["target"]: t for t in study._targets(rows)}
    assert targets["rCM 2-step FD <= 1.2x the 50-step teacher's"]["met"]  # 95 <= 96
    assert targets["rCM 2-step FD <= 1.2x the 50-step teacher's"]["bar"] == pytest.approx(96.0)
    assert targets["rCM 2-step digit accuracy >= the teacher's 4-step"]["met"]
    assert targets["rCM 1-step FD < sCM 1-step FD"]["met"] and targets["rCM 1-step accuracy > sCM 1-step"]["met"]
    assert targets["rCM 2-step diversity > DMD only's"]["met"]
    assert not targets["rCM 2-step diversity >= 0.95x the 50-step teacher's"]["met"]  # 22.5 < 0.95 x 24


def test_bad_inputs_end_in_one_line_before_anything_is_written(tmp_path):
    """Each wrong input: exit status 2, one line on stderr naming it, no traceback, no --out folder."""
    bad_json, no_keys, gpu_choice = tmp_path / "bad.json", tmp_path / "keys.json", tmp_path / "a" / "choice.json"
    bad_json.write_text("{not json")
    no_keys.write_text(json.dumps({"name": "rcm"}))
    gpu_choice.parent.mkdir()
    gpu_choice.write_text(json.dumps({"name": "rcm", "flags": [], "teacher": "gpu"}))
    cases = {
        "missing choice file": (["--phase", "b", "--choice", str(tmp_path / "none.json")], "not a readable choice.json"),
        "choice not JSON": (["--phase", "b", "--choice", str(bad_json)], "not a readable choice.json"),
        "choice without its keys": (["--phase", "b", "--choice", str(no_keys)], "needs the keys"),
        "GPU teacher not beside the choice": (["--phase", "b", "--choice", str(gpu_choice)], "not in a 'teacher'"),
        "teacher folder without config.json": (["--phase", "a", "--teacher", str(tmp_path)], "no config.json"),
        "zero minutes": (["--phase", "a", "--minutes", "0"], "--minutes must be > 0"),
        "student updates not an integer": (["--phase", "a", "--student-updates", "4e2"], "--student-updates"),
        "zero jobs": (["--phase", "a", "--jobs", "0"], "--jobs"),
        "a round that does not exist": (["--phase", "a", "--round", "99"], "argument --round: invalid choice: 99"),
        "an ablation no round has": (["--phase", "a", "--only", "rcm-b64"], "argument --only: invalid choice"),
    }
    outs = {name: tmp_path / f"out{i}" for i, name in enumerate(cases)}
    procs = {name: subprocess.Popen([sys.executable, str(ROOT / "tools" / "digits_study.py"), *argv, "--out",
                                     str(outs[name]), "--work", str(outs[name]) + "-work"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (argv, _) in cases.items()}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and cases[name][1] in lines[0], (name, err)
        assert not outs[name].exists() and not Path(str(outs[name]) + "-work").exists(), name


def test_help_describes_every_round(study):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "digits_study.py"), "--help"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "1000"})
    assert out.returncode == 0
    described = out.stdout.split("--round {", 1)[1]
    assert all(f"{number}: " in described for number in study.ROUNDS), described
