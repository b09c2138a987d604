"""Which parallel layouts fit an rCM run on a cluster, how much memory each needs and how fast it runs.

    python tools/plan.py --model wan2.1-t2v-14b --gpus 8 --gpu-memory-gib 80 --height 480 --width 832 --frames 81
    python tools/plan.py ... --json                    # one JSON object: {"layouts": [...], ...}
    python tools/plan.py ... --calibrate --profile h200.json   # measure this GPU first (CUDA), then plan
    python tools/plan.py ... --profile h200.json       # plan with a measured profile

Lists the layouts that fit (TP, CP and its mode, SP, DP, recompute: none, full, or "block N/M",
megatron-core's block method recomputing the first N blocks of the student and M of the fake
score, "+attn" where the recomputed blocks keep their attention outputs (only with
--keep-attention); offloads), fastest first, with the predicted peak memory per GPU and seconds per student
and critic iteration. When none fits it says so, names the smallest cluster of such GPUs that
would, and exits with status 1.
Impossible requests (heads not divisible by --tp, too many CP ranks for the tokens, more GPUs than
a fixed global batch can use) are refused with one line (status 2). The models are described in
docs/planning.md.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_rcm import cli  # noqa: E402
from megatron_rcm.models.wan import PRESETS  # noqa: E402
from megatron_rcm.planning import (  # noqa: E402
    DEFAULT_PROFILE, Cluster, Constraints, PlanError, Workload, load_profile, plan, save_profile, smallest_cluster,
    usable_gib)

COLUMNS = ("tp", "cp", "cp_mode", "sp", "dp", "recompute", "offload_ema", "offload_teacher", "peak_memory_gib",
           "student_seconds", "critic_seconds", "samples_per_second", "model_tflops_per_gpu")


def _parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(PRESETS), help="Wan preset (required)")
    p.add_argument("--gpus", type=int, required=True, help="GPUs of the cluster (all used for one run)")
    p.add_argument("--gpu-memory-gib", type=cli.positive_float, required=True,
                   help="memory of one GPU in GiB (e.g. 139 for an H200)")
    p.add_argument("--height", type=cli.positive_int, default=480, help="video height in pixels (default: 480)")
    p.add_argument("--width", type=cli.positive_int, default=832, help="video width in pixels (default: 832)")
    p.add_argument("--frames", type=cli.positive_int, default=81, help="video frames (default: 81)")
    p.add_argument("--micro-batch-size", type=cli.positive_int, default=1,
                   help="samples per data-parallel rank (default: 1)")
    p.add_argument("--nodes", type=cli.positive_int, default=None,
                   help="nodes the GPUs are spread over (default: 8 GPUs a node)")
    p.add_argument("--num-layers", type=cli.positive_int, default=None, help="override the preset's layer count")
    p.add_argument("--student-update-freq", type=cli.positive_int, default=5,
                   help="one student iteration every N, critic iterations between (default: 5)")
    p.add_argument("--tp", type=cli.positive_int, default=None, help="fix the tensor-parallel size")
    p.add_argument("--cp", type=cli.positive_int, default=None, help="fix the context-parallel size")
    p.add_argument("--cp-mode", choices=["a2a", "p2p"], default=None,
                   help="fix the context-parallel communication: all-to-all or ring (default: both scored)")
    p.add_argument("--global-batch-size", type=cli.positive_int, default=None,
                   help="fix DP = global batch / micro batch")
    p.add_argument("--keep-attention", action="store_true",
                   help="also score recompute that keeps the attention outputs (--recompute-keep-attention; "
                        "its predictions checked against one H200 run: docs/planning.md); default off")
    p.add_argument("--top", type=cli.positive_int, default=10, help="layouts printed (default: 10; all with --json)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--profile", type=Path, help="profile JSON (written by --calibrate); default: H200 figures")
    p.add_argument("--calibrate", action="store_true",
                   help="measure a few layers of this width on the local GPU(s) first, write --profile")
    p.add_argument("--calibration-layers", type=cli.positive_int, default=2,
                   help="blocks --calibrate times (default: 2)")
    cli.add_debug_flag(p)
    return p


def _cluster(args):
    per_node = 8
    if args.nodes is not None:
        if args.gpus % args.nodes:
            raise PlanError(f"--gpus {args.gpus} must be a multiple of --nodes {args.nodes}")
        per_node = args.gpus // args.nodes
    return Cluster(args.gpus, args.gpu_memory_gib, gpus_per_node=per_node)


def _profile(args, workload):
    if args.calibrate:
        if args.profile is None:
            raise PlanError("--calibrate needs --profile FILE to write the measurements to")
        from megatron_rcm.planning.calibrate import calibrate

        profile = calibrate(workload, layers=args.calibration_layers)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 writes and plans
            save_profile(profile, args.profile)
        return profile
    if args.profile is None:
        return DEFAULT_PROFILE
    if args.profile.is_dir():
        raise PlanError(f"--profile {args.profile} is a folder; pass the JSON file --calibrate wrote")
    if not args.profile.is_file():
        raise PlanError(f"--profile {args.profile} does not exist; write it with --calibrate")
    try:
        return load_profile(args.profile)
    except ValueError as e:  # not JSON, not an object, or keys of no profile
        raise PlanError(f"--profile {args.profile} is not a profile --calibrate wrote ({e})") from None


def _cell(row, column):
    if column == "recompute":  # block: the recomputed counts, student/fake score
        cell = (f"block {row['recompute_blocks']}/{row['fake_score_recompute_blocks']}"
                if row["recompute"] == "block" else row["recompute"])
        return cell + ("+attn" if row["keep_attention"] else "")
    return str(row[column])


def _table(rows):
    lines = ["  ".join(f"{c:>10}" for c in COLUMNS)]
    lines += ["  ".join(f"{_cell(r, c):>10}" for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def _other_batch(args, row):
    """Where no cluster fits at the fixed --global-batch-size, the one named has a larger batch: say so."""
    batch = row["dp"] * args.micro_batch_size
    if args.global_batch_size and batch != args.global_batch_size:
        return f", at global batch {batch}: none fits at --global-batch-size {args.global_batch_size}"
    return ""


def run(args):
    workload = Workload(args.model, args.height, args.width, args.frames, args.micro_batch_size,
                        num_layers=args.num_layers, student_update_freq=args.student_update_freq)
    cluster = _cluster(args)
    constraints = Constraints(args.tp, args.cp, args.cp_mode, args.global_batch_size)
    profile = _profile(args, workload)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    rows = plan(workload, cluster, profile, constraints, args.keep_attention)
    fitting = [r for r in rows if r["fits"]]
    least = min(rows, key=lambda r: r["peak_memory_gib"])
    smallest = None if fitting else smallest_cluster(workload, cluster, profile, constraints, args.keep_attention)
    if args.json:
        print(json.dumps({"model": args.model, "gpus": args.gpus, "gpu_memory_gib": args.gpu_memory_gib,
                          "tokens_per_sample": workload.tokens(workload.config()), "profile": profile.device,
                          "fits": bool(fitting), "layouts": fitting,
                          "least_memory": None if fitting else least,
                          "smallest_cluster": smallest}))
        return 0 if fitting else 1
    print(f"{args.model}, {args.height}x{args.width}x{args.frames}, {args.gpus} x {args.gpu_memory_gib:g} GiB "
          f"(profile: {profile.device})")
    if fitting:
        print(_table(fitting[:args.top]))
        print(f"best: {' '.join(fitting[0]['flags'])}")
        return 0
    print(f"nothing fits: the leanest layout ({' '.join(least['flags'])}) needs {least['peak_memory_gib']} GiB "
          f"per GPU, {usable_gib(cluster):.1f} GiB are usable")
    if smallest:
        print(f"smallest cluster of {args.gpu_memory_gib:g} GiB GPUs that fits: {smallest['gpus']} GPUs, "
              f"TP {smallest['tp']} x CP {smallest['cp']} x DP {smallest['dp']} ({smallest['peak_memory_gib']} GiB"
              f"{_other_batch(args, smallest)})")
    else:
        print(f"no cluster of {args.gpu_memory_gib:g} GiB GPUs up to 4096 GPUs fits")
    return 1


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except (PlanError, ValueError, OSError) as e:
        cli.fail("plan", e, status=2, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
