"""tools/eval_digits.py end to end: baselines and the shipped teacher, one seed, JSON per seed."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_eval_tool_writes_the_table_and_per_seed_json(tmp_path):
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "tools/eval_digits.py", "--baselines", "--model", "assets/moving_digits/teacher",
         "--name", "teacher", "--steps", "2", "--seeds", "4", "--reference", "300", "--threads", "1",
         "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"real test videos", "real videos, shuffled prompts", "gaussian noise",
                         "teacher, RF Euler 2 steps, CFG 2.5"}
    assert "| teacher, RF Euler 2 steps, CFG 2.5 | 4 |" in result.stdout
    real, noise = rows["real test videos"], rows["gaussian noise"]
    assert real["seeds"] == [4] and len(real["fd"]) == 1
    assert real["joint_acc"][0] > 0.85 and noise["fd"][0] > 10 * real["fd"][0]


RECORDED = {"sigma_max": 40.0, "mid_times": (1.2, 0.8, 0.3)}  # not the defaults


def _student_export(folder):
    """The shipped teacher as a training run exports a student: a Megatron checkpoint recording the
    sampler settings it was trained for."""
    from megatron.core import dist_checkpointing

    from megatron_rcm import load_model
    from megatron_rcm.loading import SAMPLER_KEY, checkpoint_models
    from megatron_rcm.parallel import parallel_context

    with parallel_context():
        model = load_model(str(ROOT / "assets" / "moving_digits" / "teacher"))
        state = model.sharded_state_dict(prefix="model.")
        state.update(checkpoint_models({"model.": model.config}), sampler=dict(RECORDED, mid_times=[*RECORDED["mid_times"]]))
        folder.mkdir()
        dist_checkpointing.save(state, str(folder))
    return folder


def test_students_are_sampled_at_the_times_their_training_recorded(tmp_path):
    import torch

    from megatron_rcm import load_model
    from megatron_rcm.data.moving_digits import prompt_grid
    from megatron_rcm.evaluation.digits import (classify, generate, load_classifier, reference_videos,
                                                student_sampler, video_metrics)
    from megatron_rcm.parallel import ParallelConfig, parallel_context

    student = _student_export(tmp_path / "student")
    assert student_sampler(student) == RECORDED
    assert student_sampler(student, [1.0, 0.5, 0.2])["mid_times"] == (1.0, 0.5, 0.2)
    assert student_sampler(ROOT / "assets" / "moving_digits" / "teacher")["mid_times"] == (1.5, 1.4, 1.0)
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "tools/eval_digits.py", "--model", str(student), "--sampler", "few-step", "--steps", "2",
         "--seeds", "5", "--per-prompt", "2", "--reference", "200", "--threads", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    fd = json.loads(out.read_text())["rows"][0]["fd"][0]
    torch.set_num_threads(1)
    classifier = load_classifier()
    reference = classify(classifier, reference_videos("test", 200))[0]
    digits, directions = prompt_grid(2)
    with parallel_context(ParallelConfig()):
        model = load_model(str(student)).eval()
        fds = {name: video_metrics(classifier, generate(model, "few-step", digits, directions, 5, 2, **settings),
                                   digits, directions, reference)["fd"]
               for name, settings in {"recorded": RECORDED, "defaults": {}}.items()}
    assert abs(fd - fds["recorded"]) < 1e-6 * fds["recorded"] and abs(fds["recorded"] - fds["defaults"]) > 1.0
    bad_json = tmp_path / "bad.json"
    for flags, message in {("--per-prompt", "1"): "not 1", ("--mid-times", "0.3", "0.8", "1.2"): "not 0.3 0.8 1.2",
                           ("--mid-times", "1.6", "1.0", "0.5"): "must fall strictly",
                           ("--sampler", "few-step", "--steps", "5"): "1 to 4 steps, not 5",
                           ("--steps", "x"): "got 'x'", ("--reference", "0"): "--reference",
                           ("--model", str(tmp_path / "none")): "does not exist"}.items():
        bad = subprocess.run([sys.executable, "tools/eval_digits.py", "--model", str(student), *flags, "--json",
                              str(bad_json)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and message in bad.stderr, bad.stderr
        assert not bad_json.exists()


def test_a_run_trained_as_another_samples_its_export_at_its_own_later_times(tmp_path):
    """tools/distill_digits.run_one(trained_as=...): no training; the 1- and 2-step samplers are the
    other run's, the 4-step one follows this run's --mid-times."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from distill_digits import run_one
    finally:
        sys.path.remove(str(ROOT / "tools"))
    (tmp_path / "base" / "ckpt" / "ema_student").mkdir(parents=True)
    _student_export(tmp_path / "base" / "ckpt" / "ema_student" / "iter_0000001")
    args = SimpleNamespace(work=str(tmp_path), threads=1, student_update_freq=2, student_updates=4, tangent_warmup=1)
    rows = {}
    for name, later in {"near": ["0.8", "0.3"], "far": ["1.1", "0.9"]}.items():
        path = run_one("rcm", 100, args, tmp_path / "no-data", name=name, extra=["--mid-times", "1.2", *later],
                       sample_seeds=[5], split="val", trained_as="base")
        report = json.loads(path.read_text())
        assert report["timing"]["trained_as"] == "base" and report["timing"]["iterations"] == 0
        assert sorted(p.name for p in path.parent.iterdir()) == ["eval.json", "eval.log", "eval.partial.json"]
        rows[name] = {row["name"].rsplit(" ", 1)[-1]: row["fd"][0] for row in report["rows"]}
    assert rows["near"]["1"] == rows["far"]["1"] and rows["near"]["2"] == rows["far"]["2"]
    assert rows["near"]["4"] != rows["far"]["4"]


def test_a_model_path_that_holds_no_model_is_refused_before_any_work(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a model")
    for model in ("empty", "file"):
        bad = subprocess.run([sys.executable, "tools/eval_digits.py", "--model", str(tmp_path / model)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
            f"eval_digits: error: --model: {tmp_path / model} is neither a Megatron distributed checkpoint "
            "(metadata.json) nor a diffusers transformer folder (config.json) (see --help)"], bad.stderr
