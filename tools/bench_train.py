"""Benchmark examples/pretrain_rcm.py: a random-weight Wan run at 480p (GPU).

    python tools/bench_train.py --nproc 1 --work /tmp/bench                      # 1 GPU, Wan 1.3B
    python tools/bench_train.py --nproc 4 --tp 2 --cp 2 --work /tmp/bench        # 4 GPUs (TP/CP/DP mix)
    python tools/bench_train.py --preset wan2.1-t2v-14b --num-layers 6 --config examples/configs/wan14b_rcm.yaml \
        --work /tmp/bench -- --offload-ema                                        # 14B width, 6 blocks

Writes a random diffusers teacher of the preset (once per --work folder and layer count),
synthetic latent shards of the video size ([16, 21, 60, 104] at 480p x 81 frames, text [512,
4096]) and a negative embedding, runs --iters iterations in bf16 with full recompute (unless
--no-recompute; student every 2nd iteration, no tangent warm-up, so both kinds of iteration
occur; flags after ``--`` go to the trainer), then prints one JSON line: median seconds per
student and per critic iteration (the first of each kind left out), tokens/s, model FLOP
utilisation against this card's measured bf16 matmul rate (or ``--matmul-tflops``), and peak GPU
memory. The rollout takes 1, 2, 3, 4 steps in turn, so iteration times depend on where in that
cycle they fall: with 10 or more iterations (a whole cycle of each kind after its first), the
``*_cycle_seconds`` and ``*_cycle_mfu`` fields give the mean over whole cycles, the mean the FLOP
count assumes. The median of iterations 3 and 5 of a 6-iteration run (a 2- and a 3-step rollout)
came within 0.1% of it on an H200.

Model FLOPs count network passes in forward equivalents F of one Wan forward
(``megatron_rcm.planning.timing``: ``wan_forward_flops``, ``FORWARD_EQUIVALENTS``). Recompute adds work
that is not counted (MFU, not hardware utilisation).

First-iteration time: the JSON line also holds the first student and first critic iteration's
seconds (from the trainer's log) and the wall time from launching the trainer to its first logged
iteration. ``--cache-dir DIR`` points the trainer's Triton, TorchInductor and FlashAttention-4 caches
(``TRITON_CACHE_DIR``, ``TORCHINDUCTOR_CACHE_DIR``, ``FLASH_ATTENTION_CUTE_DSL_CACHE_DIR``) into DIR; ``--fresh-cache`` empties DIR first:

    python tools/bench_train.py --work /tmp/bench --cache-dir /tmp/cache --fresh-cache   # cold
    python tools/bench_train.py --work /tmp/bench --cache-dir /tmp/cache                 # warm: a second run
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# tools/ is this script's directory. torch and megatron are imported where they are used, so that a
# wrong flag is refused before they load
from bench_flags import add_parallel_flags, check_parallel
from megatron_rcm import cli

ROOT = Path(__file__).resolve().parents[1]
TEXT_LEN = 512


def prepare(work, preset="wan2.1-t2v-1.3b", num_layers=None, latent=(21, 60, 104), text_len=TEXT_LEN):
    """(teacher folder, shard folder, negative embedding) under ``work``, written once per model and
    video size."""
    import torch
    from diffusers import WanTransformer3DModel

    from megatron_rcm.data.synthetic import write_synthetic_shards
    from megatron_rcm.models.wan import diffusers_config, wan_config

    config = wan_config(preset, **({"num_layers": num_layers} if num_layers else {}))
    teacher = work / f"teacher-{preset}-{config.num_layers}"
    if not (teacher / "config.json").exists():
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = WanTransformer3DModel.from_config(diffusers_config(config)).to(torch.bfloat16)
        model.save_pretrained(teacher)
        del model
    text = (text_len, config.text_dim)
    data = work / ("data-" + "x".join(map(str, (config.in_channels, *latent, *text))))
    if not data.exists():
        write_synthetic_shards(data, num_samples=8, samples_per_shard=4, latent_shape=(config.in_channels, *latent),
                               text_shape=text, seed=1)
    negative = work / f"negative-{text_len}x{config.text_dim}.pt"
    if not negative.exists():
        torch.save(torch.randn(*text), negative)
    return teacher, data, negative


def trainer_flags(teacher, data, negative, iters, log, tp=1, cp=1, sequence_parallel=False, cp_comm_type="a2a",
                  recompute=True, config=None, extra=()):
    """examples/pretrain_rcm.py's flags of a benchmark run: student every 2nd iteration, no warm-ups,
    no saves; ``extra`` last, so that it overrides."""
    config = config or ROOT / "examples" / "configs" / "wan1.3b_rcm.yaml"
    return [
        "--config", str(config), "--teacher", str(teacher), "--data-path", str(data),
        "--negative-prompt-embedding", str(negative), "--train-iters", str(iters),
        "--student-update-freq", "2", "--tangent-warmup", "0", "--lr-warmup-iters", "0", "--num-workers", "1",
        "--save-interval", "0", "--tensor-model-parallel-size", str(tp), "--context-parallel-size", str(cp),
        "--cp-comm-type", cp_comm_type, "--log-jsonl", str(log),
        "--sequence-parallel" if sequence_parallel else "--no-sequence-parallel",
        "--recompute-granularity", "full" if recompute else "none", *extra]


def cache_environment(cache, fresh=False):
    """The trainer's environment with its Triton and TorchInductor caches in ``cache`` (emptied first
    if ``fresh``); the inherited environment if ``cache`` is None."""
    env = dict(os.environ)
    if cache is not None:
        if fresh:
            shutil.rmtree(cache, ignore_errors=True)
        env.update(TRITON_CACHE_DIR=str(Path(cache) / "triton"), TORCHINDUCTOR_CACHE_DIR=str(Path(cache) / "inductor"),
                   FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=str(Path(cache) / "flash_attention_4"))
    return env


def _launch(command, log, env):
    """Run the trainer; returns (wall seconds to its first logged iteration, wall seconds in all)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    first = None
    while process.poll() is None:
        if first is None and log.exists() and log.stat().st_size:
            first = time.perf_counter() - start
        time.sleep(0.1)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return first, time.perf_counter() - start


def cycle_mean(seconds, cycle):
    """Mean seconds per iteration over the last whole cycles of rollout lengths, from one kind's
    iterations in order (the k-th, from 0, takes k % cycle + 1 steps); the first, which compiles,
    left out. That is the mean the MFU accounting's MEAN_ROLLOUT_STEPS assumes. None when less
    than one cycle follows the first iteration."""
    whole = max(len(seconds) - 1, 0) // cycle * cycle
    return statistics.fmean(seconds[len(seconds) - whole:]) if whole else None


def run(work, preset="wan2.1-t2v-1.3b", num_layers=None, frames=81, height=480, width=832, nproc=1, tp=1, cp=1,
        sequence_parallel=False, cp_comm_type="a2a", iters=10, recompute=True, config=None, extra=(), cache=None,
        fresh_cache=False, matmul_tflops=None):
    """Train ``iters`` iterations under torchrun; returns the JSON-ready result (rank 0's log).
    MFU divides by ``matmul_tflops`` per GPU, or by the rate timed after the run when None."""
    import torch

    from megatron_rcm.diffusion.few_step import MAX_STEPS
    from megatron_rcm.kernels import fa4
    from megatron_rcm.models.wan import wan_config
    from megatron_rcm.planning import Workload
    from megatron_rcm.planning.calibrate import measured_matmul_tflops
    from megatron_rcm.planning.timing import FORWARD_EQUIVALENTS, wan_forward_flops

    workload = Workload(preset, height, width, frames, num_layers=num_layers)
    teacher, data, negative = prepare(work, preset, num_layers, workload.latent_shape())
    log = work / f"log-{preset}-{num_layers}-{frames}-n{nproc}-tp{tp}-cp{cp}.jsonl"
    log.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(ROOT / "examples" / "pretrain_rcm.py"),
               *trainer_flags(teacher, data, negative, iters, log, tp, cp, sequence_parallel, cp_comm_type, recompute,
                              config, extra)]
    to_first, wall = _launch(command, log, cache_environment(cache, fresh_cache))
    records = [json.loads(line) for line in log.read_text().splitlines()]

    model = wan_config(preset, **({"num_layers": num_layers} if num_layers else {}))
    tokens = workload.tokens(model)
    forward = wan_forward_flops(model, tokens, TEXT_LEN)
    dp = nproc // (tp * cp)
    cuda = torch.cuda.is_available()
    rate = matmul_tflops or (measured_matmul_tflops() if cuda else None)
    peak = rate * 1e12 * nproc if cuda else None
    result = {"preset": preset, "layers": model.num_layers, "frames": frames, "gpus": nproc, "tp": tp, "cp": cp,
              "dp": dp, "sequence_parallel": sequence_parallel, "recompute": recompute, "extra": list(extra),
              "device": torch.cuda.get_device_name() if cuda else "cpu", "tokens_per_sample": tokens,
              # what the trainer's plain attention ran on (the same environment: kernels.fa4)
              "plain_attention": ("flash-attn-4" if cuda and fa4.available()
                                  and torch.cuda.get_device_capability()[0] == 9 else "sdpa"),
              "matmul_tflops_per_gpu": rate if cuda else None,
              "matmul_rate": ("given" if matmul_tflops else "timed after the run") if cuda else None,
              "cache": None if cache is None else ("cold" if fresh_cache else "reused"),
              "seconds_to_first_iteration": to_first, "wall_seconds": wall}
    for network, kind in (("student", "student"), ("fake_score", "critic")):
        def mfu(seconds):
            return forward * FORWARD_EQUIVALENTS[kind] * dp / seconds / peak if cuda else None

        every = [r["seconds"] for r in records if r["network"] == network]
        if every:
            result[f"first_{network}_seconds"] = every[0]
        if len(every) > 1:
            s = statistics.median(every[1:])
            result[f"{network}_seconds"] = s
            result[f"{network}_tokens_per_second"] = dp * tokens / s
            result[f"{network}_mfu"] = mfu(s)
        cycle = cycle_mean(every, MAX_STEPS)
        if cycle:
            result[f"{network}_cycle_seconds"] = cycle
            result[f"{network}_cycle_mfu"] = mfu(cycle)
    result["peak_memory_gib"] = max(r.get("memory/peak_allocated_gib", 0.0) for r in records)
    result["alloc_retries"] = records[-1].get("memory/alloc_retries")
    result["allocator"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    return result


def add_run_flags(parser):
    """The model, video and trainer YAML of a run (profile_train.py's too)."""
    parser.add_argument("--preset", default="wan2.1-t2v-1.3b",
                        help="Wan preset of the random-weight teacher and the student (default: %(default)s)")
    parser.add_argument("--num-layers", type=cli.positive_int, default=None,
                        help="fewer blocks than the preset's (default: the preset's)")
    parser.add_argument("--frames", type=cli.positive_int, default=81,
                        help="video frames, 4k + 1 (default: %(default)s)")
    parser.add_argument("--height", type=cli.positive_int, default=480,
                        help="video height in pixels, a multiple of 16 (default: %(default)s)")
    parser.add_argument("--width", type=cli.positive_int, default=832,
                        help="video width in pixels, a multiple of 16 (default: %(default)s)")
    parser.add_argument("--config", type=Path, default=None,
                        help="trainer YAML (default: examples/configs/wan1.3b_rcm.yaml)")


def check_run(parser, preset, num_layers, frames, height, width, config):
    """One line for a trainer YAML that is not there, an unknown Wan preset, or a video its VAE and
    patches cannot take."""
    from megatron_rcm.planning import PlanError, Workload

    if config is not None and not config.is_file():
        parser.error(f"--config {config} is not a file")
    try:
        workload = Workload(preset, height, width, frames, num_layers=num_layers)
        workload.tokens(workload.config())
    except PlanError as error:
        parser.error(str(error))
    except ValueError as error:  # no Wan preset of that name
        parser.error(f"--preset: {error}")


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True,
                        help="folder for the teacher, shards, negative embedding and logs, reused by later runs "
                             "(required)")
    add_run_flags(parser)
    parser.add_argument("--nproc", type=cli.positive_int, default=1,
                        help="GPUs: the trainer's processes under torchrun (default: %(default)s)")
    add_parallel_flags(parser, "--cp-comm-type")
    parser.add_argument("--sequence-parallel", action="store_true", help="sequence parallelism (needs --tp > 1)")
    parser.add_argument("--no-recompute", action="store_true", help="no activation recompute (default: full)")
    parser.add_argument("--iters", type=cli.positive_int, default=10, help="trainer iterations (default: %(default)s)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write the teacher, shards and negative embedding, then stop")
    parser.add_argument("--cache-dir", type=Path, help="the trainer's Triton and TorchInductor caches (default: "
                                                       "the environment's TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR)")
    parser.add_argument("--fresh-cache", action="store_true", help="empty --cache-dir first (a cold start)")
    parser.add_argument("--matmul-tflops", type=cli.positive_float,
                        help="the bf16 matmul rate per GPU (TFLOP/s) MFU divides by, to compare runs at one rate "
                             "(default: timed after the run, which varies by a few percent between runs)")
    parser.add_argument("extra", nargs="*", help="after --: flags for examples/pretrain_rcm.py (default: none)")
    return parser


def _check(parser, args):
    if args.fresh_cache and args.cache_dir is None:
        parser.error("--fresh-cache needs --cache-dir (the folder it empties)")
    check_parallel(parser, args, args.nproc, "--nproc", args.sequence_parallel and "--sequence-parallel")
    check_run(parser, args.preset, args.num_layers, args.frames, args.height, args.width, args.config)


def main():
    parser = build_parser()
    args = parser.parse_args()
    _check(parser, args)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.prepare_only:
        from megatron_rcm.planning import Workload

        latent = Workload(args.preset, args.height, args.width, args.frames).latent_shape()
        prepare(args.work, args.preset, args.num_layers, latent)
        return
    print(json.dumps(run(args.work, args.preset, args.num_layers, args.frames, args.height, args.width, args.nproc,
                         args.tp, args.cp, args.sequence_parallel, args.cp_comm_type, args.iters,
                         not args.no_recompute, args.config, args.extra, args.cache_dir, args.fresh_cache,
                         args.matmul_tflops)))


if __name__ == "__main__":
    main()
