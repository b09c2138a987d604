"""Evaluate a Moving Digits generator: prompt accuracy, Frechet distance and diversity, over seeds.

    # the shipped teacher, RF Euler with CFG (50 and 4 steps)
    nice -n 10 .venv/bin/python tools/eval_digits.py --model assets/moving_digits/teacher --sampler euler \
        --steps 50 4 --cfg 2.5
    # a distilled student (the training loop's EMA export), rCM few-step sampler (no CFG) at the
    # times its training recorded
    .venv/bin/python tools/eval_digits.py --model SAVE/ema_student/iter_NNNNNNN --sampler few-step --steps 1 2 4
    # the metrics on real and corrupted videos (their floor and ceiling)
    .venv/bin/python tools/eval_digits.py --baselines

Each seed generates ``--per-prompt`` videos for each of the 80 prompts ("a D moving DIR"),
from noise drawn with that seed. Accuracy: the classifier's digit/direction against the prompt.
FD: against ``--reference`` real videos of ``--split`` (source images never used for training:
"val" while choosing hyperparameters, "test" for a reported table). The generator runs on the
GPU when there is one; the noise is drawn on the CPU, so both give the same videos up to rounding.
Diversity: mean pairwise feature distance between the videos of one prompt. Rows print as
mean ± std over seeds [min, max]; ``--json`` also writes every per-seed number.
"""

import argparse
import json
import time

import torch

from bench_flags import output_file  # tools/ is this script's directory
from megatron_rcm import cli
from megatron_rcm.atomic_output import atomic_write_bytes
from megatron_rcm.data.moving_digits import make_videos, prompt_grid
from megatron_rcm.diffusion.few_step import MAX_STEPS, few_step_times
from megatron_rcm.diffusion.time import HALF_PI
from megatron_rcm.evaluation.digits import (SAMPLERS, classify, generate, load_classifier, reference_videos,
                                            student_sampler, video_metrics)

METRICS = ("digit_acc", "direction_acc", "joint_acc", "fd", "diversity")


def _cell(values):
    t = torch.tensor(values, dtype=torch.float64)
    spread = t.std().item() if len(values) > 1 else 0.0
    return f"{t.mean().item():.3f} ± {spread:.3f} [{t.min().item():.3f}, {t.max().item():.3f}]"


def table(rows) -> str:
    """Markdown table of {name, seeds, per-seed metric lists}."""
    lines = ["| generator | seeds | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for row in rows:
        lines.append(f"| {row['name']} | {','.join(map(str, row['seeds']))} | "
                     + " | ".join(_cell(row[m]) for m in METRICS) + " |")
    return "\n".join(lines)


def _collect(name, seeds, per_seed):
    return {"name": name, "seeds": list(seeds), **{m: [r[m] for r in per_seed] for m in METRICS}}


def baselines(classifier, reference, per_prompt, seeds, split="test"):
    """Real videos of ``split`` (what a perfect generator reaches), their prompts shuffled, and pure noise."""
    digits, directions = prompt_grid(per_prompt)
    real_row = f"real {split} videos"
    rows = {real_row: [], "real videos, shuffled prompts": [], "gaussian noise": []}
    for seed in seeds:
        real = make_videos(split, len(digits), seed=seed, digits=digits, directions=directions)
        rows[real_row].append(video_metrics(classifier, real.videos, digits, directions, reference))
        perm = torch.randperm(len(digits), generator=torch.Generator().manual_seed(seed))
        rows["real videos, shuffled prompts"].append(
            video_metrics(classifier, real.videos[perm], digits, directions, reference))
        noise = torch.randn(real.videos.shape, generator=torch.Generator().manual_seed(seed))
        rows["gaussian noise"].append(video_metrics(classifier, noise, digits, directions, reference))
    return [_collect(name, seeds, r) for name, r in rows.items()]


def sampler_rows(args, classifier, reference):
    from megatron_rcm import load_model
    from megatron_rcm.parallel import ParallelConfig, parallel_context

    digits, directions = prompt_grid(args.per_prompt)
    rows = []
    settings = student_sampler(args.model, args.mid_times) if args.sampler == "few-step" else {}
    args.few_step_settings = settings  # what --json records
    with parallel_context(ParallelConfig()):
        model = load_model(args.model).eval()
        for steps in args.steps:
            start = time.time()
            per_seed = [video_metrics(classifier, generate(model, args.sampler, digits, directions, seed, steps,
                                                           args.cfg, args.shift, **settings),
                                      digits, directions, reference)
                        for seed in args.seeds]
            label = (f"{args.name or args.model}, RF Euler {steps} steps, CFG {args.cfg:g}" if args.sampler == "euler"
                     else f"{args.name or args.model}, few-step {steps}")
            rows.append(_collect(label, args.seeds, per_seed))
            print(f"{label}: {time.time() - start:.0f}s for {len(args.seeds)} seeds", flush=True)
    return rows


def _check_model(parser, path):
    """A --model that holds no model is refused before the reference videos are classified."""
    from megatron_rcm.loading import load_model_config

    try:
        load_model_config(path)
    except (OSError, ValueError) as e:
        parser.error(f"--model: {e}")


def main():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="what megatron_rcm.load_model reads: a diffusers folder or a Megatron checkpoint "
                                    "(default: none; give it or --baselines)")
    p.add_argument("--name", help="generator name in the table (default: the folder)")
    p.add_argument("--sampler", choices=SAMPLERS, default="euler",
                   help="euler: a teacher with guidance; few-step: a distilled student (default: %(default)s)")
    p.add_argument("--steps", type=cli.positive_int, nargs="+", default=[50],
                   help="step counts, one table row each; 1 to 4 for few-step (default: %(default)s)")
    p.add_argument("--cfg", type=cli.positive_float, default=2.5,
                   help="guidance scale of the euler sampler (1: none; default: %(default)s)")
    p.add_argument("--shift", type=cli.positive_float, default=1.0,
                   help="RF time shift of the euler sampler (default: %(default)s)")
    p.add_argument("--mid-times", type=cli.positive_float, nargs=3, metavar="T",
                   help="few-step sampler: TrigFlow times after the first step (default: those the student's "
                        "training recorded with its export, else 1.5 1.4 1.0)")
    p.add_argument("--baselines", action="store_true", help="also evaluate real, shuffled-prompt and noise videos")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="sampling seeds, one set of videos each (default: %(default)s)")
    p.add_argument("--per-prompt", type=int, default=2,
                   help="videos per prompt and seed, at least 2 (default: %(default)s)")
    p.add_argument("--reference", type=cli.positive_int, default=2000,
                   help="real videos of --split for the FD reference (default: %(default)s)")
    p.add_argument("--split", choices=("val", "test"), default="test",
                   help="the held-out images FD is measured on (default: %(default)s)")
    p.add_argument("--threads", type=cli.positive_int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--json", type=output_file, help="also write every per-seed number here (default: none)")
    args = p.parse_args()
    if args.model is None and not args.baselines:
        p.error("give --model and/or --baselines")
    if args.model is not None:
        _check_model(p, args.model)
    if args.per_prompt < 2:
        p.error(f"--per-prompt must be >= 2 (diversity compares the videos of one prompt), not {args.per_prompt}")
    if args.sampler == "few-step" and max(args.steps) > MAX_STEPS:
        p.error(f"--steps: the few-step sampler takes 1 to {MAX_STEPS} steps, not {max(args.steps)}")
    if args.mid_times:
        try:
            few_step_times(MAX_STEPS, HALF_PI, args.mid_times)
        except ValueError:
            p.error(f"--mid-times must fall strictly from below pi/2 to above 0, not "
                    f"{' '.join(map(str, args.mid_times))}")
    torch.set_num_threads(args.threads)
    classifier = load_classifier()
    reference = classify(classifier, reference_videos(args.split, args.reference))[0]
    rows = baselines(classifier, reference, args.per_prompt, args.seeds, args.split) if args.baselines else []
    if args.model is not None:
        rows += sampler_rows(args, classifier, reference)
    print(table(rows))
    if args.json:
        atomic_write_bytes(args.json, json.dumps({"args": vars(args), "rows": rows}, indent=1, default=str).encode())


if __name__ == "__main__":
    main()
