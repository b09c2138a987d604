"""The Moving Digits tools' flags: each says what it does and its default, a wrong value is refused in
one line on stderr (exit status 2) before anything is written, and the flags their callers pass parse."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..reliability.driver import run_cases

ROOT = Path(__file__).resolve().parents[2]
TEACHER = str(ROOT / "assets" / "moving_digits" / "teacher")
TOOLS = ("distill_digits", "train_digits_teacher", "train_digits_classifier", "make_digits_shards", "digits_balance")


@pytest.fixture(scope="module")
def tools():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        yield {name: importlib.import_module(name) for name in TOOLS}
    finally:
        sys.path.remove(str(ROOT / "tools"))


@pytest.mark.parametrize("name", TOOLS)
def test_every_flag_says_what_it_does_and_its_default(tools, name):
    flags = [a for a in tools[name].build_parser()._actions if a.dest != "help"]
    assert [a.dest for a in flags if not (a.help or "").strip()] == []
    assert [a.dest for a in flags if "default: " not in a.help and not a.required] == []
    assert [a.dest for a in flags if "(required)" not in a.help and a.required] == []


def test_help_exits_0_and_lists_every_flag(tools):
    runs = {name: subprocess.Popen([sys.executable, f"tools/{name}.py", "--help"], cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in TOOLS}
    for name, run in runs.items():
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, (name, err[-2000:])
        flags = [s for a in tools[name].build_parser()._actions for s in a.option_strings]
        assert [flag for flag in flags if flag not in out] == [], name


def _parses(tool, argv):
    parser = tool.build_parser()
    args = parser.parse_args(argv)
    tool._check(parser, args)
    return args


def test_the_flags_their_callers_pass_still_parse(tools, tmp_path):
    teacher = tools["train_digits_teacher"]
    # tools/digits_study.py's train_teacher, at its defaults
    _parses(teacher, ["--init", TEACHER, "--out", str(tmp_path / "t"), "--steps", "1000000", "--minutes", "3.0",
                      "--batch", "128", "--lr", "0.0005", "--lr-min", str(0.0005 / 10), "--workers", "6",
                      "--eval-every", "1000", "--seed", "3"])
    # docs/results.md's teacher stages
    _parses(teacher, ["--out", str(tmp_path / "t"), "--steps", "6000", "--minutes", "14"])
    _parses(teacher, ["--init", TEACHER, "--out", str(tmp_path / "t"), "--seed", "2", "--lr", "5e-4"])
    args = _parses(tools["distill_digits"], ["--work", str(tmp_path / "w"), "--seeds", "0", "1", "2",
                                             "--student-updates", "400", "--gif", str(tmp_path / "m.gif")])
    assert (args.seeds, args.methods, args.jobs) == ([0, 1, 2], ["scm", "rcm", "dmd"], 2)
    _parses(tools["train_digits_classifier"], [])
    _parses(tools["make_digits_shards"], ["--out", str(tmp_path / "shards")])
    _parses(tools["digits_balance"], [])
    assert list(tmp_path.iterdir()) == []


# {out}: the output path, {missing}: a folder that does not exist, {file}: a file that does
DISTILL = ["distill_digits", "--work", "{out}"]
TEACH = ["train_digits_teacher", "--out", "{out}"]
CLASSIFIER = ["train_digits_classifier", "--out", "{out}"]
SHARDS = ["make_digits_shards", "--out", "{out}"]
BALANCE = ["digits_balance"]
WRONG = [
    (DISTILL + ["--student-updates", "0"], "argument --student-updates: expected an integer >= 1, got '0'"),
    (DISTILL + ["--jobs", "0"], "argument --jobs: expected an integer >= 1"),
    (DISTILL + ["--micro-batch-size", "-8"], "argument --micro-batch-size: expected an integer >= 1"),
    (DISTILL + ["--tangent-warmup", "-1"], "argument --tangent-warmup: expected an integer >= 0"),
    (DISTILL + ["--seeds", "x"], "argument --seeds: expected an integer >= 0, got 'x'"),
    (DISTILL + ["--seeds"], "argument --seeds: expected at least one argument"),
    (DISTILL + ["--seeds", "0", "1", "0"], "--seeds: each at most once"),
    (DISTILL + ["--methods", "rcm", "rcm"], "--methods: each at most once"),
    (DISTILL + ["--methods", "cm"], "argument --methods: invalid choice: 'cm'"),
    (DISTILL + ["--lr", "0"], "argument --lr: expected a number > 0, got '0'"),
    (DISTILL + ["--lr", "-0.0001"], "argument --lr: expected a number > 0"),
    (DISTILL + ["--teacher", "{missing}"], "--teacher {missing}: no config.json there"),
    (DISTILL + ["--gif", "{missing}/methods.gif"], "the folder {missing} does not exist"),
    (["distill_digits", "--work", "{file}"], "--work {file} is a file"),
    (DISTILL + ["--student-update", "4"], "unrecognized arguments: --student-update 4"),
    (["train_digits_teacher"], "the following arguments are required: --out"),
    (TEACH + ["--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
    (TEACH + ["--batch", "x"], "argument --batch: expected an integer >= 1, got 'x'"),
    (TEACH + ["--lr", "0"], "argument --lr: expected a number > 0"),
    (TEACH + ["--lr-min", "2e-3"], "--lr-min must be between 0 and --lr (0.001), not 0.002"),
    (TEACH + ["--lr-min", "-0.0001"], "--lr-min must be between 0 and --lr"),
    (TEACH + ["--minutes", "-2"], "argument --minutes: expected a number > 0"),
    (TEACH + ["--ema", "1"], "--ema must be in [0, 1)"),
    (TEACH + ["--uncond-prob", "1.5"], "--uncond-prob is a probability"),
    (TEACH + ["--seed", "-1"], "argument --seed: expected an integer >= 0"),
    (TEACH + ["--eval-every", "-1000"], "argument --eval-every: expected an integer >= 0"),
    (TEACH + ["--init", "{missing}"], "--init {missing}: no config.json there"),
    (["train_digits_teacher", "--out", "{file}"], "--out {file} is a file"),
    (TEACH + ["--lr-mi", "1e-4"], "unrecognized arguments: --lr-mi 1e-4"),
    (CLASSIFIER + ["--steps", "-3"], "argument --steps: expected an integer >= 1"),
    (CLASSIFIER + ["--steps", "10"], "OneCycleLR divides by zero"),
    (CLASSIFIER + ["--test-videos", "many"], "argument --test-videos: expected an integer >= 1, got 'many'"),
    (CLASSIFIER + ["--lr", "nan"], "argument --lr: expected a number > 0"),
    (["train_digits_classifier", "--out", "{missing}/classifier.safetensors"], "in a folder that exists"),
    (CLASSIFIER + ["--bogus"], "unrecognized arguments: --bogus"),
    (["make_digits_shards"], "the following arguments are required: --out"),
    (SHARDS + ["--num-samples", "0"], "argument --num-samples: expected an integer >= 1"),
    (SHARDS + ["--samples-per-shard", "1e3"], "argument --samples-per-shard: expected an integer >= 1, got '1e3'"),
    (["make_digits_shards", "--out", "{file}"], "--out {file} is a file"),
    (["make_digits_shards", "--out", "{file}/shards"], "--out {file}/shards cannot be made a folder ([Errno 20]"),
    (SHARDS + ["--num", "8"], "unrecognized arguments: --num 8"),
    (BALANCE + ["--batches", "0"], "argument --batches: expected an integer >= 1"),
    (BALANCE + ["--threads", "two"], "argument --threads: expected an integer >= 1, got 'two'"),
    (BALANCE + ["--dcm-step", "-0.05"], "--dcm-step must be a number >= 0"),
    (BALANCE + ["--batch", "8", "--extra"], "unrecognized arguments: --extra"),
]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """{case index: outcome} of WRONG, each tool's cases in one process (tests/reliability/driver.py),
    in a folder whose contents are compared before and after."""
    root, work = tmp_path_factory.mktemp("inputs"), tmp_path_factory.mktemp("runs")
    (root / "file").write_text("kept")
    places = {"out": root / "out", "missing": root / "missing", "file": root / "file"}
    outcomes = {}
    for tool in TOOLS:
        cases = [{"id": str(i), "argv": [arg.format(**places) for arg in argv[1:]]}
                 for i, (argv, _) in enumerate(WRONG) if argv[0] == tool]
        outcomes.update(run_cases(ROOT / "tools" / f"{tool}.py", cases, work))
    return outcomes, places, sorted(p.name for p in root.iterdir()), (root / "file").read_text()


@pytest.mark.parametrize("index", range(len(WRONG)), ids=[" ".join(argv) for argv, _ in WRONG])
def test_a_wrong_flag_is_refused_in_one_line_before_anything_is_written(refusals, index):
    outcomes, places, left, kept = refusals
    (tool, *_), fragment = WRONG[index]
    run = outcomes[str(index)]
    lines = run["stderr"].splitlines()
    assert run["status"] == 2 and len(lines) == 1, run["stderr"][-3000:]
    assert re.fullmatch(rf"{tool}: error: .+ \(see --help\)", lines[0]), lines[0]
    assert fragment.format(**places) in lines[0]
    assert run["stdout"] == "" and (left, kept) == (["file"], "kept")
