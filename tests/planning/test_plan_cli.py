"""tools/plan.py: the issue's two requests, and one-line refusals of impossible ones; the flags of plan.py and
the benchmark tools say what they set and their defaults."""

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import plan  # noqa: E402

from megatron_rcm.planning import (  # noqa: E402
    DEFAULT_PROFILE, Cluster, Layout, load_profile, save_profile, usable_gib)

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


@pytest.mark.parametrize("flag, value", [
    ("--num-layers", "0"), ("--num-layers", "-1"), ("--student-update-freq", "0"), ("--student-update-freq", "-1"),
    ("--cp", "0"), ("--tp", "0"), ("--global-batch-size", "0"), ("--top", "-1"), ("--height", "0"), ("--nodes", "0"),
    ("--gpu-memory-gib", "nan"), ("--gpu-memory-gib", "inf"), ("--gpu-memory-gib", "0"), ("--calibration-layers", "0"),
])
def test_a_value_that_means_nothing_is_refused_by_the_parser(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        plan.main(BASE + ["--gpus", "8", "--gpu-memory-gib", "80", flag, value])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    expected = "a number > 0" if flag == "--gpu-memory-gib" else "an integer >= 1"
    assert line.endswith(f": error: argument {flag}: expected {expected}, got '{value}' (see --help)")  # prog: argv[0]


def test_a_saved_profile_plans_like_the_one_it_holds(tmp_path, capsys):
    slower = replace(DEFAULT_PROFILE, matmul_tflops=DEFAULT_PROFILE.matmul_tflops / 2)
    save_profile(slower, tmp_path / "slow.json")
    assert load_profile(tmp_path / "slow.json") == slower
    argv = BASE + ["--gpus", "8", "--gpu-memory-gib", "80", "--json"]
    assert plan.main(argv) == 0
    default = json.loads(capsys.readouterr().out)["layouts"][0]
    assert plan.main(argv + ["--profile", str(tmp_path / "slow.json")]) == 0
    slow = json.loads(capsys.readouterr().out)["layouts"][0]
    assert slow["peak_memory_gib"] == default["peak_memory_gib"]  # memory does not depend on speed
    assert slow["student_seconds"] > default["student_seconds"]


@pytest.mark.parametrize("flags, message", [
    (["--profile", "missing.json"], "write it with --calibrate"),
    (["--calibrate"], "--calibrate needs --profile"),
])
def test_profile_mistakes_are_refused_in_one_line(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        plan.main(BASE + ["--gpus", "8", "--gpu-memory-gib", "80"] + flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_profile_with_unknown_keys_is_refused(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"matmul_tflops": 1.0, "typo_tflops": 2.0}))
    with pytest.raises(ValueError, match="unknown profile keys"):
        load_profile(tmp_path / "p.json")


@pytest.mark.parametrize("layout", [Layout(tp=8, sp=True, offload_ema=True, offload_teacher=True),
                                    Layout(tp=4, cp=2, dp=2, sp=True, cp_mode="p2p", recompute="none")],
                         ids=["tp8-offloads", "tp4-cp2-ring-no-recompute"])
def test_a_layouts_flags_give_the_trainer_that_layout_over_the_14b_recipe(layout):
    from megatron_rcm.training.arguments import parse_args

    recipe = Path(plan.__file__).resolve().parents[1] / "examples" / "configs" / "wan14b_rcm.yaml"
    args = parse_args(["--config", str(recipe), *layout.flags()])
    assert (args.tensor_model_parallel_size, args.context_parallel_size, args.sequence_parallel) == (
        layout.tp, layout.cp, layout.sp)
    assert (args.offload_ema, args.offload_teacher, args.recompute_granularity) == (
        layout.offload_ema, layout.offload_teacher, layout.recompute)
    assert layout.cp == 1 or args.cp_comm_type == layout.cp_mode


def test_every_flag_says_what_it_does():
    parser = plan._parser()
    assert [a.dest for a in parser._actions if not a.help] == []
    defaults = [a for a in parser._actions if a.default not in (None, False) and a.dest != "help"]
    assert all("default" in a.help for a in defaults), [a.dest for a in defaults if "default" not in a.help]


# tools whose parser is built inside main(): checked through their --help output
HELP_TOOLS = ("profile_train.py", "digits_study.py", "digits_balance.py", "tune_flash_jvp.py", "eval_digits.py")


def _help_entries(text):
    """({option or positional: its help text}, options the usage line requires) from argparse's --help."""
    usage = text.split("\n\n", 1)[0]
    required = set(re.findall(r"(?<![\[\w-])(--[\w-]+)", usage))
    entries, current, in_arguments = {}, None, False
    for line in text.splitlines():
        if re.match(r"(options|optional arguments|positional arguments):$", line):
            in_arguments, current = True, None
        elif not in_arguments:
            continue
        elif entry := re.match(r"  (\S.*?)(?: {2,}(\S.*))?$", line):
            invocation = entry.group(1).split(", ")[-1].split()
            current = (invocation[0], len(invocation) > 1)  # (name, takes a value)
            entries[current] = entry.group(2) or ""
        elif current and re.match(r" {3,}\S", line):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries, required


def test_every_benchmark_tool_flag_says_what_it_does_and_its_default():
    # they start at once: importing torch, Triton and Megatron takes most of their time
    env = dict(os.environ, TRITON_INTERPRET="1", COLUMNS="100", PYTHONWARNINGS="ignore")
    runs = {tool: subprocess.Popen([sys.executable, str(ROOT / "tools" / tool), "--help"], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tool in HELP_TOOLS}
    problems = {}
    for tool, run in runs.items():
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, (tool, err[-2000:])
        entries, required = _help_entries(out)
        assert ("--help", False) in entries and len(entries) > 3, (tool, out)  # the parsing found the options
        silent = [name for (name, _), text in entries.items() if not text.strip()]
        no_default = [name for (name, takes_value), text in entries.items()
                      if takes_value and name.startswith("-") and name not in required and "default" not in text]
        if silent or no_default:
            problems[tool] = {"no help": silent, "no default": no_default}
    assert problems == {}
