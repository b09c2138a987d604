"""The planner against measurement on the local GPU: predicted and measured peak memory and seconds
per student / critic iteration of examples/pretrain_rcm.py, for layouts that run on one GPU.

    python tools/validate_plan.py [--work /tmp/plan] [--cases 1.3b,14b-6] [--json out.json]

First calibrates a profile at each width (``megatron_rcm.planning.calibrate``, unless
--skip-calibration), then trains each case for a few iterations with random weights
(``bench_train.run``: median of the iterations of each kind after the first) and prints a
markdown table with the predictions of the default (H200) profile and of the calibrated one,
and each prediction's error. ``--smoke`` runs one tiny case on CPU (TRITON_INTERPRET=1) to check
the plumbing; its numbers mean nothing.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# megatron_rcm.planning (megatron-core) is imported where it is used, so that a wrong flag is refused
# before it loads
import bench_train  # noqa: E402
from bench_flags import names_of, output_file  # noqa: E402

from megatron_rcm import cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WAN14B = ROOT / "examples" / "configs" / "wan14b_rcm.yaml"
OFFLOAD = dict(offload_ema=True, offload_teacher=True)
# all on one GPU; config: the trainer's YAML (None: wan1.3b_rcm.yaml); layout: the planning.Layout's
# fields (the others its defaults)
CASES = {
    "1.3b": dict(preset="wan2.1-t2v-1.3b", layout={}),
    "1.3b-offload": dict(preset="wan2.1-t2v-1.3b", layout=OFFLOAD),
    "1.3b-17f-no-recompute": dict(preset="wan2.1-t2v-1.3b", frames=17, layout=dict(recompute="none")),
    "14b-6": dict(preset="wan2.1-t2v-14b", layers=6, config=WAN14B, layout={}),
    # as many blocks as the planner fits with both offloads (about 121 of 139 GiB)
    "14b-8-offload": dict(preset="wan2.1-t2v-14b", layers=8, config=WAN14B, layout=OFFLOAD),
}
SMOKE = dict(preset="tiny-a", frames=5, height=32, width=32, config=ROOT / "examples" / "configs" / "tiny_cpu.yaml",
             layout=dict(recompute="none"))


def _error(predicted, measured):
    return f"{100 * (predicted - measured) / measured:+.1f}%" if measured else "-"


def _workload(case):
    from megatron_rcm.planning import Workload

    return Workload(case["preset"], case.get("height", 480), case.get("width", 832), case.get("frames", 81),
                    num_layers=case.get("layers"), student_update_freq=2)


def _calibrate_to_file(workload, path):
    from megatron_rcm.planning import save_profile
    from megatron_rcm.planning.calibrate import calibrate

    save_profile(calibrate(workload), path)


def _calibrated(work, cases):
    """{preset: Profile} measured on this GPU, at the first case's video size of each preset.

    Each calibration runs in its own process: CUDA memory a process once held stays with it
    (17 GiB here), and the training cases need the whole card."""
    import multiprocessing

    from megatron_rcm.planning import load_profile

    profiles = {}
    for case in cases:
        preset = case["preset"]
        if preset in profiles:
            continue
        path = work / f"profile-{preset}.json"
        child = multiprocessing.get_context("spawn").Process(
            target=_calibrate_to_file, args=(replace(_workload(case), num_layers=None), path))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"validate_plan: calibration at {preset} failed (exit {child.exitcode})")
        profiles[preset] = load_profile(path)
    return profiles


def run_case(work, name, iters, memory_gib, profiles):
    from megatron_rcm.planning import Cluster, Layout, predict

    case = CASES[name]
    workload, layout = _workload(case), Layout(**case["layout"])
    # explicit both ways: wan14b_rcm.yaml turns both offloads on
    extra = ["--offload-ema" if layout.offload_ema else "--no-offload-ema",
             "--offload-teacher" if layout.offload_teacher else "--no-offload-teacher"]
    try:
        measured = bench_train.run(work, workload.preset, workload.num_layers, workload.frames, workload.height,
                                   workload.width, iters=iters, recompute=layout.recompute == "full",
                                   config=case.get("config"), extra=extra)
    except subprocess.CalledProcessError as e:  # e.g. out of memory: the other cases still run
        measured = {"error": f"trainer exited with status {e.returncode}"}
    row = {"case": name, "measured": measured}
    for label, profile in profiles.items():
        row[label] = predict(workload, layout, Cluster(1, memory_gib), profile)
    return row


def _markdown(rows):
    lines = ["| case | measured peak GiB | measured student s | measured critic s | profile | predicted peak GiB "
             "(error) | predicted student s (error) | predicted critic s (error) |", "|---" * 8 + "|"]
    for row in rows:
        m = row["measured"]
        if "error" in m:
            lines.append(f"| {row['case']} | {m['error']} |" + " |" * 6)
            continue
        for label in (k for k in row if k not in ("case", "measured")):
            p = row[label]
            lines.append(
                f"| {row['case']} | {m['peak_memory_gib']:.2f} | {m.get('student_seconds', 0):.3f} | "
                f"{m.get('fake_score_seconds', 0):.3f} | {label} | {p['peak_memory_gib']:.2f} "
                f"({_error(p['peak_memory_gib'], m['peak_memory_gib'])}) | {p['student_seconds']:.3f} "
                f"({_error(p['student_seconds'], m.get('student_seconds'))}) | {p['critic_seconds']:.3f} "
                f"({_error(p['critic_seconds'], m.get('fake_score_seconds'))}) |")
    return "\n".join(lines)


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="teachers, shards, logs (default: a temporary folder)")
    parser.add_argument("--cases", type=names_of(CASES, "cases"), default=",".join(CASES),
                        help=f"comma-separated, of {sorted(CASES)} (default: all)")
    parser.add_argument("--iters", type=cli.positive_int, default=4,
                        help="trainer iterations per case; 2 student + 2 critic iterations at 4 (default: %(default)s)")
    parser.add_argument("--skip-calibration", action="store_true",
                        help="predict with the default (H200) profile only, calibrate none on this GPU")
    parser.add_argument("--json", type=output_file,
                        help="also write the rows as JSON, after every case (default: print only)")
    parser.add_argument("--smoke", action="store_true", help="one tiny CPU case: plumbing only")
    return parser


def main():
    args = build_parser().parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        args.work = args.work or Path(scratch)
        args.work.mkdir(parents=True, exist_ok=True)
        _validate(args)


def _validate(args):
    if args.smoke:
        CASES["smoke"] = SMOKE
        args.cases, args.skip_calibration = "smoke", True
    names = args.cases.split(",")
    import torch

    from megatron_rcm.planning import DEFAULT_PROFILE

    memory_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 24.0
    profiles = {"default": DEFAULT_PROFILE}
    if not args.skip_calibration:
        for preset, profile in _calibrated(args.work, [CASES[n] for n in names]).items():
            profiles[f"calibrated at {preset}"] = profile
    rows = []
    for name in names:
        preset = CASES[name]["preset"]
        own = {k: v for k, v in profiles.items() if k == "default" or k.endswith(preset)}
        rows.append(run_case(args.work, name, args.iters, memory_gib, own))
        print(json.dumps(rows[-1]), flush=True)
        if args.json:  # after every case: a run cut off by its time limit keeps what it measured
            args.json.write_text(json.dumps(rows, indent=1))
    print(_markdown(rows))


if __name__ == "__main__":
    main()
