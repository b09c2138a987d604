"""Compares repeated ``tools/bench_train.py`` runs of several trees, as an A/B of a change needs.

Two runs of one tree on one GPU can land 0.5% apart (docs/benchmarks.md), so a change worth less
than that needs several runs of each tree, interleaved. This reads each tree's bench_train output
(one or more runs in one file: each JSON line with whole-cycle means is one run), and prints per
tree the mean over its runs of the student's and the critic's cycle seconds, their min-max, the
ratio to the first tree's mean, and the cycle MFU. A run without whole-cycle means (cut before its
summary line, or under 10 iterations) is counted and left out.

    python tools/compare_runs.py base=ab_base.log new=ab_new.log [--json PATH]

``bash tools/gpu_runs.sh ab`` makes such files (``AB_BASE``: a checkout of the base tree).
"""
import argparse
import json
import statistics
from pathlib import Path

from bench_flags import output_file  # tools/ is this script's directory
from megatron_rcm import cli
from megatron_rcm.atomic_output import atomic_write_bytes

KINDS = (("student", "student"), ("fake_score", "critic"))


def _tree(text):
    """argparse type: NAME=FILE, the file one that exists."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=FILE, e.g. base=ab_base.log")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{path!r} is not a file; give bench_train's output")
    return name, path


def runs_of(path):
    """(the summary dicts with cycle means, how many runs started without one: cut before their
    summary line, or shorter than a whole cycle). A run starts with the trainer's "iter 1/" line."""
    runs, started = [], 0
    with open(path) as f:
        for line in f:
            started += line.startswith("iter 1/")
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "student_cycle_seconds" in record and "fake_score_cycle_seconds" in record:
                runs.append(record)
    return runs, max(started - len(runs), 0)


def summarize(trees):
    """One row per tree: {tree, runs, left_out, <kind>_seconds/_min/_max/_ratio/_mfu, first_student_seconds}."""
    rows = []
    for name, (runs, left_out) in trees.items():
        row = dict(tree=name, runs=len(runs), left_out=left_out)
        for key, _ in KINDS:
            seconds = [r[f"{key}_cycle_seconds"] for r in runs]
            row[f"{key}_seconds"] = statistics.fmean(seconds)
            row[f"{key}_min"], row[f"{key}_max"] = min(seconds), max(seconds)
            row[f"{key}_mfu"] = statistics.fmean(r[f"{key}_cycle_mfu"] for r in runs)
        row["first_student_seconds"] = [r.get("first_student_seconds") for r in runs]
        rows.append(row)
    for row in rows:
        for key, _ in KINDS:
            row[f"{key}_ratio"] = rows[0][f"{key}_seconds"] / row[f"{key}_seconds"]
    return rows


def table(rows):
    head = "| tree | runs |" + "".join(f" {label} s: mean (min-max) | x first tree | MFU |" for _, label in KINDS)
    lines = [head + " first student iteration s |", "|---|---|" + "---|---|---|" * len(KINDS) + "---|"]
    for row in rows:
        cells = "".join(f" {row[f'{key}_seconds']:.3f} ({row[f'{key}_min']:.3f}-{row[f'{key}_max']:.3f}) |"
                        f" {row[f'{key}_ratio']:.4f} | {row[f'{key}_mfu']:.4f} |" for key, _ in KINDS)
        runs = f"{row['runs']}" + (f" ({row['left_out']} left out)" if row["left_out"] else "")
        firsts = ", ".join("-" if s is None else f"{s:.1f}" for s in row["first_student_seconds"])
        lines.append(f"| {row['tree']} | {runs} |{cells} {firsts} |")
    return "\n".join(lines)


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trees", nargs="+", type=_tree, metavar="NAME=FILE",
                   help="each tree's bench_train output; ratios are to the first (required)")
    p.add_argument("--json", type=output_file, help="also write the rows as JSON here (default: print only)")
    return p


def main():
    parser = build_parser()
    args = parser.parse_args()
    names = [name for name, _ in args.trees]
    for name in names:
        if names.count(name) > 1:
            parser.error(f"tree {name!r} is given twice; give each tree one NAME=FILE")
    trees = {}
    for name, path in args.trees:
        runs, left_out = runs_of(path)
        if not runs:
            cli.fail("compare_runs", f"{path!r} holds no bench_train run with whole-cycle means ({left_out} without "
                     "them); run bench_train with --iters 10 or more, to its end", status=2)
        trees[name] = runs, left_out
    rows = summarize(trees)
    print(table(rows))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(rows, indent=1).encode())


if __name__ == "__main__":
    main()
