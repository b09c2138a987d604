"""tools/digits_study.py's decisions: the validation choice rule, the flags the baselines share, the targets."""

import json
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


def _eval_json(path, name, per_steps):
    """An eval.json like tools/eval_digits.py's: {steps: (digit_acc per seed, fd per seed)}."""
    rows = [{"name": f"{name}, few-step {steps}", "seeds": [100, 101], "digit_acc": list(acc), "fd": list(fd),
             "direction_acc": [1.0, 1.0], "joint_acc": list(acc), "diversity": [20.0, 21.0]}
            for steps, (acc, fd) in per_steps.items()]
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_choice_is_the_lowest_2_step_fd_among_the_accurate_enough(study, tmp_path):
    results = {
        "rcm": _eval_json(tmp_path / "a.json", "rcm", {2: ((0.80, 0.84), (100.0, 120.0))}),  # accurate, FD 110
        "rcm-dmdw0.1": _eval_json(tmp_path / "b.json", "b", {2: ((0.70, 0.70), (50.0, 50.0))}),  # FD 50, not accurate
        "rcm-freq5": _eval_json(tmp_path / "c.json", "c", {2: ((0.85, 0.85), (90.0, 94.0))}),  # accurate, FD 92
        "scm": _eval_json(tmp_path / "d.json", "d", {2: ((0.99, 0.99), (10.0, 10.0))}),  # not an rCM setting
    }
    name, why = study.choose(results, teacher_4step_acc=0.82)
    assert name == "rcm-freq5" and "92.0" in why
    name, why = study.choose(results, teacher_4step_acc=0.9)  # none reaches it: the most accurate
    assert name == "rcm-freq5" and "no configuration" in why


def test_baselines_share_only_their_part_of_the_chosen_flags(study):
    flags = ["--dmd-weight", "0.3", "--student-update-freq", "5", "--dcm-step", "0.05", "--dmd-shift", "1"]
    assert study.flag_subset(flags, study.SCM_FLAGS) == ["--dcm-step", "0.05"]
    assert study.flag_subset(flags, study.CRITIC_FLAGS) == ["--student-update-freq", "5", "--dmd-shift", "1"]


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
