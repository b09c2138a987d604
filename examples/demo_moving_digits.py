#!/usr/bin/env python
"""The README's demo: distil the shipped Moving Digits teacher with rCM on CPU, then compare.

    python examples/demo_moving_digits.py [--work runs/demo] [--iters 800] [--nproc 2] [--fresh]

1. writes Moving Digits training shards and the negative-prompt embedding;
2. runs ``examples/pretrain_rcm.py`` under torchrun on ``--nproc`` gloo ranks (data parallel),
   with ``examples/configs/digits_demo.yaml``, from the teacher in ``assets/moving_digits/teacher``;
3. samples the teacher (RF Euler, 50 steps, CFG 2.5) and the EMA student (1, 2 and 4 steps, no
   CFG) for the same prompts and noise, with a progress bar, and writes ``WORK/side_by_side.gif``
   (labelled rows: teacher, student 1/2/4 steps; labelled columns: prompts) and
   ``WORK/metrics.json`` (prompt accuracy, Frechet distance and diversity of each, from the
   committed Moving Digits classifier);
4. prints the command that samples and scores the student again (``tools/eval_digits.py``).
The run is the study's budget of about 400 student updates at batch 8, not its batch of 32: the
numbers show the pipeline and a partly distilled student; docs/results.md has the study's.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from megatron_rcm import cli

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "assets" / "moving_digits" / "teacher"
GIF_PROMPTS = [(d, d % 8) for d in range(8)]  # (digit, direction) per column


def train(work, iters, nproc):
    from megatron_rcm.data.toy_text_encoder import NEGATIVE_PROMPT_FILE, write_training_data

    data = work / "data"
    if not (data / NEGATIVE_PROMPT_FILE).exists():
        write_training_data(data, 2048, 512)
    env = {"OMP_NUM_THREADS": "1"}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"  # the JVP attention kernel on CPU tensors
    command = ["--standalone", f"--nproc_per_node={nproc}", str(ROOT / "examples" / "pretrain_rcm.py"), "--config", str(ROOT / "examples/configs/digits_demo.yaml"),
               "--teacher", str(TEACHER), "--data-path", str(data),
               "--negative-prompt-embedding", str(data / NEGATIVE_PROMPT_FILE), "--train-iters", str(iters),
               "--global-batch-size", str(4 * nproc), "--save", str(work / "ckpt"),
               "--log-jsonl", str(work / "train.jsonl")]
    had_checkpoints = any((work / "ckpt").glob("iter_*"))
    if not _torchrun(command, env):
        hint = (f"; if {work / 'ckpt'} holds a run with other settings (an older demo), --fresh starts over "
                f"(make demo DEMO_FLAGS=--fresh)"
                if had_checkpoints else "")
        raise SystemExit(f"demo: examples/pretrain_rcm.py failed (its error is above){hint}")
    exports = sorted((work / "ckpt" / "ema_student").glob("iter_*"))
    return exports[-1]


def _torchrun(argv, env) -> bool:
    """torchrun ``argv`` with ``env`` added to the ranks' environment; False if a rank failed. In this
    process, so that a failed rank ends in its own error line rather than torchrun's traceback."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        run(parse_args(argv))
        return True
    except ChildFailedError:
        return False
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def sample_all(student_path, digits, directions, seed):
    from tqdm import tqdm

    from megatron_rcm import load_model
    from megatron_rcm.evaluation.digits import generate, student_sampler
    from megatron_rcm.parallel import ParallelConfig, parallel_context

    def sampled(name, model, sampler, steps, **kwargs):
        with tqdm(total=steps, desc=f"sampling {len(digits)} videos: {name}", unit="step") as bar:
            return generate(model, sampler, digits, directions, seed, steps, tick=bar.update, **kwargs)

    with parallel_context(ParallelConfig()):
        teacher, student = load_model(str(TEACHER)).eval(), load_model(str(student_path)).eval()
        settings = student_sampler(student_path)  # the times its training recorded
        name = "teacher, 50 steps, CFG 2.5"
        out = {name: sampled(name, teacher, "euler", 50, cfg=2.5)}
        for steps in (1, 2, 4):
            name = f"student, {steps} step{'s' if steps > 1 else ''}"
            out[name] = sampled(name, student, "few-step", steps, **settings)
    return out


def main():
    p = cli.ArgumentParser(prog="demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "runs" / "demo"),
                   help="folder for the shards, checkpoints, GIF and metrics (default: runs/demo)")
    p.add_argument("--iters", type=cli.positive_int, default=800,
                   help="training iterations, half of them student updates (default: %(default)s, 405 student updates)")
    p.add_argument("--nproc", type=cli.positive_int, default=2, help="gloo ranks, data parallel (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the comparison (default: 0)")
    p.add_argument("--fresh", action="store_true",
                   help="delete WORK/ckpt first (the demo resumes from it otherwise, and refuses a run with other settings)")
    args = p.parse_args()
    work = Path(args.work)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file, no permission
        p.error(f"--work {work} cannot be made a folder ({e})")
    with cli.one_line_errors("demo", (OSError,)):  # writing into it later: a full disk, say
        _demo(args, work)


def _demo(args, work):
    if args.fresh:
        shutil.rmtree(work / "ckpt", ignore_errors=True)
    student = train(work, args.iters, args.nproc)

    from megatron_rcm.data.moving_digits import make_videos, prompt_for, prompt_grid
    from megatron_rcm.evaluation.digits import classify, load_classifier, video_metrics, write_gif

    digits, directions = prompt_grid(2)  # every prompt twice (diversity compares videos of one prompt)
    videos = sample_all(student, digits, directions, args.seed)
    classifier = load_classifier()
    reference, _, _ = classify(classifier, make_videos("test", 1000, seed=20_000_000).videos)
    metrics = {name: video_metrics(classifier, v, digits, directions, reference) for name, v in videos.items()}
    (work / "metrics.json").write_text(json.dumps({"student": str(student), "metrics": metrics}, indent=2))
    columns = [int(((digits == d) & (directions == k)).nonzero()[0, 0]) for d, k in GIF_PROMPTS]
    write_gif({name: v[columns] for name, v in videos.items()}, work / "side_by_side.gif",
              column_labels=[prompt_for(d, k).replace(" moving ", " moving\n") for d, k in GIF_PROMPTS])
    print("| generator | digit acc | direction acc | FD | diversity |\n|---|---|---|---|---|")
    for name, m in metrics.items():
        print(f"| {name} | {m['digit_acc']:.3f} | {m['direction_acc']:.3f} | {m['fd']:.1f} | {m['diversity']:.1f} |")
    print(f"wrote {work / 'side_by_side.gif'} and {work / 'metrics.json'}")
    print(f"sample and score the distilled student again (more seeds, other step counts):\n  {eval_command(student)}")


def eval_command(student) -> str:
    """The tools/eval_digits.py command for ``student`` (an ema_student export), as it is typed here:
    with this interpreter (``make demo`` runs .venv's, which a plain ``python`` may not be) and paths
    relative to the working folder where they lie below it."""
    model = Path(student).parent  # the export folder: its latest iteration, the one just written
    return (f"{_typed(sys.executable)} {_typed(ROOT / 'tools' / 'eval_digits.py')} --model {_typed(model)} "
            "--sampler few-step --steps 1 2 4")


def _typed(path) -> str:
    path, here = os.path.abspath(path), os.getcwd()  # abspath, not resolve: a venv's python is a symlink
    return os.path.relpath(path, here) if path.startswith(here + os.sep) else path


if __name__ == "__main__":
    main()
