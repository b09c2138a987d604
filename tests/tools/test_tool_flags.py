"""The benchmark, profiling and tuning tools' flags: each says what it does and its default in --help,
and a wrong value is refused in one line on stderr (exit status 2, no traceback) before any work."""

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

from ..reliability.driver import run_cases

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

TOOLS = ("tools/bench_attention.py", "tools/bench_convert_memory.py", "tools/bench_elementwise.py",
         "tools/bench_plain_attention.py",
         "tools/compare_runs.py", "tools/bench_encoders.py", "tools/bench_generate.py", "tools/bench_train.py",
         "tools/bench_wan.py",
         "tools/profile_train.py", "tools/study_hopper_kernel.py", "tools/tune_flash_jvp.py", "tools/validate_plan.py",
         "examples/distill_2d.py")
NO_FOLDER = "no/such/folder/out.json"
WORK = ["--work", "/nonexistent/bench"]  # refused before it is made; were it reached, making it would fail

# (tool, arguments, a fragment of the one line that refuses them)
REFUSALS = [
    ("bench_attention", ["--shapes", "wan1.3b,wan3"], "unknown shapes ['wan3']"),
    ("bench_attention", ["--json", NO_FOLDER], "the folder 'no/such/folder' of"),
    ("bench_attention", ["--shape", "wan1.3b"], "unrecognized arguments: --shape"),  # no abbreviations
    ("bench_plain_attention", ["--shapes", "wan1.3b,wan14b"], "unknown shapes ['wan14b']"),
    ("bench_plain_attention", ["--rounds", "0"], "--rounds: expected an integer >= 1, got '0'"),
    ("bench_plain_attention", ["--rounds", "x"], "--rounds: expected an integer >= 1, got 'x'"),
    ("bench_plain_attention", ["--bogus"], "unrecognized arguments: --bogus"),
    ("bench_plain_attention", ["--json", NO_FOLDER], "the folder 'no/such/folder' of"),
    ("bench_convert_memory", ["--layers", "0"], "--layers: expected an integer >= 1, got '0'"),
    ("bench_convert_memory", ["--ffn", "-4096"], "--ffn: expected an integer >= 1, got '-4096'"),
    ("bench_convert_memory", ["--dim", "1k"], "--dim: expected an integer >= 1, got '1k'"),
    ("bench_convert_memory", ["--dim", "1000"], "--dim must be a multiple of 128"),
    ("bench_convert_memory", ["--workdir", "no/such/folder"], "--workdir no/such/folder is not a folder"),
    ("bench_convert_memory", ["--bogus"], "unrecognized arguments: --bogus"),
    ("bench_elementwise", ["--options", "models,fastest"], "unknown option sets ['fastest']"),
    ("bench_elementwise", ["--forms", "jvp"], "unknown forms ['jvp']"),
    ("bench_elementwise", ["--tokens", "0"], "--tokens: expected an integer >= 1, got '0'"),
    ("bench_elementwise", ["--tokens", "-5"], "--tokens: expected an integer >= 1, got '-5'"),
    ("bench_elementwise", ["--repeats", "two"], "--repeats: expected an integer >= 1, got 'two'"),
    ("bench_elementwise", ["--pieces", "modulate,rope"], "unknown pieces ['rope']"),
    ("bench_elementwise", ["--json", NO_FOLDER], "the folder 'no/such/folder' of"),
    ("bench_elementwise", ["--gelu-launches", "32,256"], "give ROWS,COLS,ROWS_PER_PROGRAM,WARPS as four positive"),
    ("bench_elementwise", ["--gelu-launches", "32,256,250,8"], "ROWS_PER_PROGRAM must be a multiple of ROWS"),
    ("bench_elementwise", ["--gelu-launches", "0,128,256,4"], "give ROWS,COLS,ROWS_PER_PROGRAM,WARPS as four positive"),
    ("bench_elementwise", ["--gelu-launches", "32,128,256,w8"], "give ROWS,COLS,ROWS_PER_PROGRAM,WARPS as four"),
    ("bench_encoders", ["--repeats", "0"], "--repeats: expected an integer >= 1, got '0'"),
    ("bench_encoders", ["--steps", "fifty"], "--steps: expected an integer >= 1, got 'fifty'"),
    ("bench_encoders", ["--cpu_smoke"], "unrecognized arguments: --cpu_smoke"),
    ("bench_generate", ["--teacher-steps", "0"], "--teacher-steps: expected an integer >= 1, got '0'"),
    ("bench_generate", ["--height", "480px"], "--height: expected an integer >= 1, got '480px'"),
    ("bench_generate", ["--prompt-tokens", "600"], "--prompt-tokens: expected at most 512"),
    ("bench_generate", ["--guidance-scale", "nan"], "--guidance-scale: expected a number > 0, got 'nan'"),
    ("bench_generate", ["--json", NO_FOLDER], "the folder 'no/such/folder' of"),
    ("bench_generate", ["--cp-mode", "ring"], "--cp-mode: invalid choice: 'ring'"),
    ("bench_generate", ["--tp", "2"], "--tp 2 x --cp 1 needs a multiple of 2 processes"),
    ("bench_generate", ["--student-steps", "5"], "--student-steps must lie in 1..4"),
    ("bench_generate", ["--num-frames", "80"], "--num-frames 80 must be 1 + a multiple"),
    ("bench_generate", ["--bogus"], "unrecognized arguments: --bogus"),
    ("bench_train", [*WORK, "--iters", "0"], "--iters: expected an integer >= 1, got '0'"),
    ("bench_train", [*WORK, "--nproc", "two"], "--nproc: expected an integer >= 1, got 'two'"),
    ("bench_train", [*WORK, "--nproc", "3", "--tp", "2"], "needs a multiple of 2 processes (--nproc), not 3"),
    ("compare_runs", ["base"], "'base': give NAME=FILE, e.g. base=ab_base.log"),
    ("compare_runs", ["base=README.md", "--json", NO_FOLDER], "the folder 'no/such/folder' of"),
    ("compare_runs", ["base=/no/such/run.log"], "'/no/such/run.log' is not a file; give bench_train's output"),
    ("compare_runs", ["a=README.md", "a=README.md"], "tree 'a' is given twice; give each tree one NAME=FILE"),
    ("compare_runs", ["=README.md"], "'=README.md': give NAME=FILE"),
    ("bench_train", [*WORK, "--sequence-parallel"], "--sequence-parallel needs --tp > 1"),
    ("bench_train", [*WORK, "--fresh-cache"], "--fresh-cache needs --cache-dir"),
    ("bench_train", [*WORK, "--matmul-tflops", "0"], "--matmul-tflops: expected a number > 0, got '0'"),
    ("bench_train", [*WORK, "--matmul-tflops", "abc"], "--matmul-tflops: expected a number > 0, got 'abc'"),
    ("bench_train", [*WORK, "--matmul-tflops=-5"], "--matmul-tflops: expected a number > 0, got '-5'"),
    ("bench_train", [*WORK, "--matmul-tflops", "inf"], "--matmul-tflops: expected a number > 0, got 'inf'"),
    ("bench_train", [*WORK, "--frames", "80"], "--frames 80 must be 4k + 1"),
    ("bench_train", ["--iters", "6"], "the following arguments are required: --work"),
    ("bench_train", [*WORK, "--iter", "6"], "unrecognized arguments: --iter"),
    ("bench_wan", ["--repeats", "0"], "--repeats: expected an integer >= 1, got '0'"),
    ("bench_wan", ["--layers", "x"], "--layers: expected an integer >= 1, got 'x'"),
    ("bench_wan", ["--sp"], "--sp needs --tp > 1"),
    ("bench_wan", ["--cp", "2", "--cp-mode", "p2p"], "--tp 1 x --cp 2 needs a multiple of 2 processes"),
    ("bench_wan", ["--preset", "wan3"], "--preset: unknown model preset 'wan3'"),
    ("bench_wan", ["--height", "104"], "--height 104 gives 13 latent steps, not a multiple of"),
    ("bench_wan", ["--bogus"], "unrecognized arguments: --bogus"),
    ("profile_train", ["--iters", "3"], "--iters must be at least 4"),
    ("profile_train", ["--iters", "-6"], "--iters: expected an integer >= 1, got '-6'"),
    ("profile_train", ["--num-layers", "many"], "--num-layers: expected an integer >= 1, got 'many'"),
    ("profile_train", ["--json", NO_FOLDER], "the folder 'no/such/folder' of"),
    ("profile_train", ["--bogus"], "unrecognized arguments: --bogus"),
    ("profile_train", ["--top", "0"], "--top: expected an integer >= 1, got '0'"),
    ("study_hopper_kernel", ["--against", "no/such/old.py"], "--against: 'no/such/old.py' is not a file"),
    ("study_hopper_kernel", ["--rounds", "0"], "--rounds: expected an integer >= 1, got '0'"),
    ("study_hopper_kernel", ["--ablations"], "unrecognized arguments: --ablations"),
    ("study_hopper_kernel", ["--against", "tools"], "--against: 'tools' is not a file"),
    ("study_hopper_kernel", ["--rep-ms", "abc"], "--rep-ms: expected a number > 0, got 'abc'"),
    ("study_hopper_kernel", ["--against", "README.md", "--configs", "64,64,1"],
     "give --against or --configs, not both"),
    ("study_hopper_kernel", ["--configs", "64,64,1", "128,64,3"], "--configs 128,64,3: needs 256 KiB of shared memory"),
    ("study_hopper_kernel", ["--configs", "64,64,1,0,1,1"],
     "--configs: expected BLOCK_M,BLOCK_N,stages[,EARLY[,PEEL]] (3 integers >= 1, then 0 or 1 for each optional "
     "flag), got '64,64,1,0,1,1'"),
    ("tune_flash_jvp", ["--rep-ms", "0"], "--rep-ms: expected a number > 0, got '0'"),
    ("tune_flash_jvp", ["--configs", "64,64,4,3,1", "64,64,four,3"],
     "--configs: expected BLOCK_M,BLOCK_N,warps,stages[,TMA] (4 integers >= 1, then 0 or 1 for each optional "
     "flag), got '64,64,four,3'"),
    ("tune_flash_jvp", ["--hopper-configs", "64,64,2,2"], "--hopper-configs: expected BLOCK_M,BLOCK_N,stages"),
    ("tune_flash_jvp", ["--cpu-smoke", "--bogus"], "unrecognized arguments: --bogus"),
    ("validate_plan", ["--iters", "-4"], "--iters: expected an integer >= 1, got '-4'"),
    ("validate_plan", ["--iters", "four"], "--iters: expected an integer >= 1, got 'four'"),
    ("validate_plan", ["--cases", "1.3b,70b"], "unknown cases ['70b']"),
    ("validate_plan", ["--bogus"], "unrecognized arguments: --bogus"),
    ("distill_2d", ["--depth", "0"], "--depth: expected an integer >= 1, got '0'"),
    ("distill_2d", ["--lr", "fast"], "--lr: expected a number > 0, got 'fast'"),
    ("distill_2d", ["--bogus"], "unrecognized arguments: --bogus"),
]


def _script(name):
    return next(tool for tool in TOOLS if Path(tool).stem == name)


def _parser(tool):
    path = ROOT / tool
    if path.parent.name == "tools":  # by name, as the tools import each other: the module other tests import
        module = importlib.import_module(path.stem)
    else:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.build_parser()


@pytest.mark.parametrize("tool", TOOLS, ids=lambda tool: Path(tool).stem)
def test_help_says_what_every_flag_does_and_its_default(tool, capsys):
    parser = _parser(tool)
    torch = sys.modules.get("torch")
    assert torch is None or not torch.cuda.is_initialized()  # importing the tool needs no GPU
    silent = [action.dest for action in parser._actions if not (action.help or "").strip()]
    assert silent == []
    takes_value = [action for action in parser._actions if action.option_strings and action.nargs != 0]
    assert [action.dest for action in takes_value if not action.required and "(default: " not in action.help] == []
    assert [action.dest for action in takes_value if action.required and "(required)" not in action.help] == []
    with pytest.raises(SystemExit) as exit:
        parser.parse_args(["--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert [flag for action in parser._actions for flag in action.option_strings if flag not in text] == []


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """{(tool, case index): outcome} of REFUSALS, each tool's cases in one process (tests/reliability/driver.py)."""
    env = {key: value for key, value in os.environ.items() if key != "WORLD_SIZE"}  # one process, not torchrun's
    work, outcomes = tmp_path_factory.mktemp("runs"), {}
    for tool in TOOLS:
        name = Path(tool).stem
        cases = [{"id": str(i), "argv": args} for i, (n, args, _) in enumerate(REFUSALS) if n == name]
        outcomes.update({(name, i): run for i, run in run_cases(ROOT / tool, cases, work, env).items()})
    return outcomes


@pytest.mark.parametrize("index", range(len(REFUSALS)), ids=[f"{n} {' '.join(a)}" for n, a, _ in REFUSALS])
def test_a_wrong_flag_is_refused_in_one_line_before_any_work(refusals, index):
    name, _, fragment = REFUSALS[index]
    result = refusals[(name, str(index))]
    assert result["status"] == 2, result["stderr"][-3000:]
    assert result["stdout"] == ""
    lines = result["stderr"].splitlines()
    assert len(lines) == 1 and re.fullmatch(rf"{name}: error: .+ \(see --help\)", lines[0]), result["stderr"][-3000:]
    assert fragment in lines[0]
