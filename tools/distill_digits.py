"""Issue 8's comparison: distil the shipped Moving Digits teacher with sCM only, rCM and DMD only,
for several training seeds, and tabulate the students' 1-, 2- and 4-step quality.

    .venv/bin/python tools/distill_digits.py --work runs/digits --seeds 0 1 2 --student-updates 400

Every method gets the same number of student updates (``--student-updates``) at the same batch,
learning rate and EMA; rCM and DMD-only also train the fake score in between (one critic update
per student update, ``--student-update-freq 2``), sCM-only has no critic. Each run is
``examples/pretrain_rcm.py`` in one process, on the GPU if there is one (``--jobs`` runs share
it), else on the CPU with the Triton JVP kernel in the interpreter, followed by ``tools/eval_digits.py`` on its EMA export with sampling seed S for training seed S
(``--seed 1000+S`` of the trainer), so a cell's spread covers both. Finished runs (``WORK/METHOD-seedS/eval.json``) are not redone.
Prints the markdown table and writes ``WORK/table.md`` and ``WORK/results.json``; ``--gif``
also writes the teacher (50 Euler steps, CFG 2.5) above each method's first-seed student at
1, 2 and 4 steps, for one prompt per digit.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from eval_digits import METRICS, table  # tools/ is this script's directory

from megatron_rcm import cli
from megatron_rcm.data.toy_text_encoder import NEGATIVE_PROMPT_FILE, write_training_data
from megatron_rcm.losses.config import RCMConfig

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "assets" / "moving_digits" / "teacher"
CONFIG = ROOT / "examples" / "configs" / "digits_demo.yaml"
# loss weights that differ from the trainer's defaults (sCM 100, DMD 1)
METHODS = {"scm": {"dmd_weight": 0.0}, "rcm": {}, "dmd": {"scm_weight": 0.0}}
NAMES = {"scm": "sCM only", "rcm": "rCM", "dmd": "DMD only"}


def iterations_for(method, student_updates, tangent_warmup, student_update_freq):
    """Iterations after which the schedule has made ``student_updates`` student updates."""
    schedule = RCMConfig(student_update_freq=student_update_freq, tangent_warmup=tangent_warmup, **METHODS[method])
    iteration = updates = 0
    while updates < student_updates:
        updates += schedule.updates_student(iteration)
        iteration += 1
    return iteration


def weight_flags(method):
    return [flag for name, value in METHODS[method].items() for flag in (f"--{name.replace('_', '-')}", str(value))]


def _flag_value(flags, name, default):
    return type(default)(flags[flags.index(name) + 1]) if name in flags else default


def run_env(threads):
    """Child environment: the Triton interpreter only without a GPU (tiny runs share one GPU)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    return env


def run_one(method, seed, args, data, name=None, extra=(), sample_seeds=None, split="test", timeout=None,
            trained_as=None):
    """Distil ``args.teacher`` with ``method`` (training seed 1000 + ``seed``, trainer ``extra`` flags
    after the method's), then evaluate its EMA export at 1, 2 and 4 steps with ``sample_seeds``
    (default ``[seed]``) against ``split``; ``extra`` may also hold ``--student-updates N`` (default
    ``args.student_updates``). Writes WORK/NAME/{train,eval}.log, train.jsonl, eval.json
    (kept: a finished run is not redone); returns the eval.json path. ``timeout``: seconds for the
    whole run (subprocess.TimeoutExpired when it is spent). ``trained_as``: a finished run whose
    training this one's would repeat (its flags differ only in the sampler's later times, which
    training does not use): its export is sampled at this run's ``--mid-times`` instead."""
    name = name or f"{method}-seed{seed}"
    run = Path(args.work) / name
    result = run / "eval.json"
    if result.exists():
        return result
    run.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.time() + timeout
    env = run_env(args.threads)
    extra = list(extra)
    freq = _flag_value(extra, "--student-update-freq", args.student_update_freq)
    updates = _flag_value(extra, "--student-updates", args.student_updates)  # this script's, not the trainer's
    if "--student-updates" in extra:
        del extra[extra.index("--student-updates"):extra.index("--student-updates") + 2]
    iters = iterations_for(method, updates, args.tangent_warmup, freq)
    start = time.time()
    if trained_as is None:
        _train(method, seed, args, data, run, iters, extra, env, deadline)
    trained = time.time()
    export = sorted((Path(args.work) / (trained_as or name) / "ckpt" / "ema_student").glob("iter_*"))[-1]
    times = extra[extra.index("--mid-times"):extra.index("--mid-times") + 4] if trained_as else []
    evaluate = [sys.executable, str(ROOT / "tools" / "eval_digits.py"), "--model", str(export),
                "--name", NAMES[method] if name == f"{method}-seed{seed}" else name,
                "--sampler", "few-step", "--steps", "1", "2", "4", "--split", split,
                "--seeds", *map(str, [seed] if sample_seeds is None else sample_seeds), "--threads", str(args.threads),
                "--json", str(run / "eval.partial.json"), *times]
    with open(run / "eval.log", "w") as log:
        subprocess.run(evaluate, env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
                       timeout=None if deadline is None else max(1.0, deadline - time.time()))
    report = json.loads((run / "eval.partial.json").read_text())
    report["timing"] = {"iterations": 0 if trained_as else iters, "train_s": round(trained - start, 1),
                        "eval_s": round(time.time() - trained, 1), **({"trained_as": trained_as} if trained_as else {})}
    result.write_text(json.dumps(report, indent=1))
    return result


def _train(method, seed, args, data, run, iters, extra, env, deadline):
    train = [sys.executable, str(ROOT / "examples" / "pretrain_rcm.py"), "--config", str(CONFIG),
             "--teacher", str(args.teacher), "--data-path", str(data),
             "--negative-prompt-embedding", str(data / NEGATIVE_PROMPT_FILE), "--seed", str(1000 + seed),
             "--train-iters", str(iters), "--micro-batch-size", str(args.micro_batch_size),
             "--global-batch-size", str(args.micro_batch_size), "--lr", str(args.lr),
             "--fake-score-lr", str(args.lr), "--tangent-warmup", str(args.tangent_warmup),
             "--student-update-freq", str(args.student_update_freq), "--save", str(run / "ckpt"),
             "--save-interval", str(iters), "--log-interval", "25", "--log-jsonl", str(run / "train.jsonl"),
             *weight_flags(method), *extra]  # later flags win: extra overrides the defaults above
    with open(run / "train.log", "w") as log:
        subprocess.run(train, env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
                       timeout=None if deadline is None else max(1.0, deadline - time.time()))


def comparison_gif(path, args):
    from megatron_rcm import load_model
    from megatron_rcm.evaluation.digits import generate, student_sampler, write_gif
    from megatron_rcm.parallel import ParallelConfig, parallel_context

    digits = torch.arange(10)
    directions = digits % 8
    seed = args.seeds[0]
    with parallel_context(ParallelConfig()):
        teacher = load_model(str(args.teacher)).eval()
        videos = {"teacher": generate(teacher, "euler", digits, directions, seed, 50, cfg=2.5)}
        for method in args.methods:
            export = sorted((Path(args.work) / f"{method}-seed{seed}" / "ckpt" / "ema_student").glob("iter_*"))[-1]
            student, settings = load_model(str(export)).eval(), student_sampler(export)
            for steps in (1, 2, 4):
                videos[f"{method} {steps}"] = generate(student, "few-step", digits, directions, seed, steps, **settings)
    write_gif(videos, path, scale=3)


def merge(results):
    """One row per (method, steps), the per-seed numbers of every run side by side."""
    rows = {}
    for path in results:
        for row in json.loads(Path(path).read_text())["rows"]:
            merged = rows.setdefault(row["name"], {"name": row["name"], "seeds": [], **{m: [] for m in METRICS}})
            merged["seeds"] += row["seeds"]
            for m in METRICS:
                merged[m] += row[m]
    return list(rows.values())


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "runs" / "digits"),
                   help="folder of the training data (WORK/data), the runs (WORK/METHOD-seedS, finished ones "
                        "are not redone), table.md and results.json (default: runs/digits)")
    p.add_argument("--teacher", default=str(TEACHER),
                   help="the teacher's diffusers folder, distilled by every run (default: "
                        "assets/moving_digits/teacher)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                   help="scm: sCM only; rcm: both terms; dmd: DMD only (default: %(default)s)")
    p.add_argument("--seeds", type=cli.non_negative_int, nargs="+", default=[0, 1, 2],
                   help="one run per method and seed S >= 0: training seed 1000 + S, sampling seed S "
                        "(default: %(default)s)")
    p.add_argument("--student-updates", type=cli.positive_int, default=400,
                   help="student updates of every run, whatever its method (default: %(default)s)")
    p.add_argument("--micro-batch-size", type=cli.positive_int, default=8,
                   help="videos per iteration, also the global batch (default: %(default)s)")
    p.add_argument("--lr", type=cli.positive_float, default=1e-4,
                   help="student and fake-score learning rate (default: %(default)s)")
    p.add_argument("--tangent-warmup", type=cli.non_negative_int, default=40,
                   help="iterations of the sCM tangent warm-up, sCM term only (0: none; default: %(default)s)")
    p.add_argument("--student-update-freq", type=cli.positive_int, default=2,
                   help="one student iteration every N, critic iterations between (default: %(default)s)")
    p.add_argument("--train-videos", type=cli.positive_int, default=8192,
                   help="training videos written to WORK/data if it has none (default: %(default)s)")
    p.add_argument("--jobs", type=cli.positive_int, default=2,
                   help="runs at a time, sharing the GPU if there is one (default: %(default)s)")
    p.add_argument("--threads", type=cli.positive_int, default=1,
                   help="torch threads per run and its evaluation (default: %(default)s)")
    p.add_argument("--gif", help="also write the side-by-side GIF here, in a folder that exists (default: none)")
    return p


def _check(parser, args):
    """One line for each input the runs would otherwise fail on, minutes or hours later."""
    if not (Path(args.teacher) / "config.json").is_file():
        parser.error(f"--teacher {args.teacher}: no config.json there (a diffusers model folder)")
    if Path(args.work).exists() and not Path(args.work).is_dir():
        parser.error(f"--work {args.work} is a file, not a folder")
    for flag, values in (("--methods", args.methods), ("--seeds", args.seeds)):
        if len(set(values)) < len(values):
            parser.error(f"{flag}: each at most once (the runs of one method and seed share a folder), not "
                         f"{' '.join(map(str, values))}")
    if args.gif and not Path(args.gif).parent.is_dir():
        parser.error(f"--gif {args.gif}: the folder {Path(args.gif).parent} does not exist")


def main():
    parser = build_parser()
    args = parser.parse_args()
    _check(parser, args)
    work = Path(args.work)
    data = work / "data"
    if not (data / NEGATIVE_PROMPT_FILE).exists():
        write_training_data(data, args.train_videos)
    runs = [(m, s) for s in args.seeds for m in args.methods]  # every method's first seed first
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda ms: run_one(*ms, args, data), runs))
    rows = merge(results)
    text = table(rows)
    print(text)
    (work / "table.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    if args.gif:
        comparison_gif(args.gif, args)


if __name__ == "__main__":
    main()
