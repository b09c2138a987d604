"""Benchmark examples/pretrain_rcm.py: a Wan-1.3B-shaped random-weight run at 480p (GPU).

    python tools/bench_train.py --nproc 1 --work /tmp/bench                      # 1 GPU
    python tools/bench_train.py --nproc 4 --tp 2 --cp 2 --work /tmp/bench        # 4 GPUs (TP/CP/DP mix)

Writes a random diffusers teacher (once per --work folder), synthetic 480p x 81-frame latent
shards ([16, 21, 60, 104], text [512, 4096]) and a negative embedding, runs --iters iterations
in bf16 with full recompute (student every 2nd iteration, no tangent warm-up, so both kinds of
iteration occur), then prints one JSON line: median seconds per student and per critic
iteration (the first of each kind left out), tokens/s, model FLOP utilisation against this
card's measured bf16 matmul rate, and peak GPU memory.

Model FLOPs count network passes in forward equivalents F (one Wan forward, the formula of
architecture.md): student iteration = guided teacher 2F + student JVP 2F + student forward and
backward 3F + DMD (rollout of n steps: (n - 1)F + 3F, guided teacher 2F, fake score F) with
n = 2.5 on average; critic iteration = rollout 2.5F + fake score forward and backward 3F.
Recompute adds work that is not counted (MFU, not hardware utilisation).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LATENT = (16, 21, 60, 104)
TEXT = (512, 4096)


def wan_forward_flops(config, tokens, text_len):
    d, f, layers = config.hidden_size, config.ffn_hidden_size, config.num_layers
    per_layer = 8 * tokens * d * d + 4 * tokens**2 * d + 4 * tokens * d * d + 4 * tokens * text_len * d
    return layers * (per_layer + 4 * tokens * d * f)


def measured_matmul_tflops(n=8192, repeats=20):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def prepare(work):
    from diffusers import WanTransformer3DModel

    from megatron_rcm.data.synthetic import write_synthetic_shards

    teacher = work / "teacher"
    if not (teacher / "config.json").exists():
        torch.manual_seed(0)
        model = WanTransformer3DModel(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30)
        model.to(torch.bfloat16).save_pretrained(teacher)
        write_synthetic_shards(work / "data", num_samples=8, samples_per_shard=4, latent_shape=LATENT,
                               text_shape=TEXT, seed=1)
        torch.save(torch.randn(*TEXT).to(torch.bfloat16), work / "negative.pt")
    return teacher


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--cp", type=int, default=1)
    parser.add_argument("--sequence-parallel", action="store_true")
    parser.add_argument("--cp-comm-type", default="a2a")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--prepare-only", action="store_true",
                        help="write the teacher, shards and negative embedding (CPU work), then stop")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    teacher = prepare(args.work)
    if args.prepare_only:
        return
    log = args.work / f"log-n{args.nproc}-tp{args.tp}-cp{args.cp}.jsonl"
    log.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
        str(ROOT / "examples" / "pretrain_rcm.py"), "--config", str(ROOT / "examples" / "configs" / "wan1.3b_rcm.yaml"),
        "--teacher", str(teacher), "--data-path", str(args.work / "data"),
        "--negative-prompt-embedding", str(args.work / "negative.pt"), "--train-iters", str(args.iters),
        "--student-update-freq", "2", "--tangent-warmup", "0", "--lr-warmup-iters", "0", "--num-workers", "1", "--save-interval", "0",
        "--tensor-model-parallel-size", str(args.tp), "--context-parallel-size", str(args.cp),
        "--cp-comm-type", args.cp_comm_type, "--log-jsonl", str(log),
    ] + (["--sequence-parallel"] if args.sequence_parallel else [])
    subprocess.run(command, check=True, cwd=ROOT)
    records = [json.loads(line) for line in log.read_text().splitlines()]

    from megatron_rcm.models.wan import wan_config

    config = wan_config("wan2.1-t2v-1.3b")
    tokens = LATENT[1] * (LATENT[2] // 2) * (LATENT[3] // 2)
    forward = wan_forward_flops(config, tokens, TEXT[0])
    dp = args.nproc // (args.tp * args.cp)
    flops = {"student": forward * (2 + 2 + 3 + (1.5 + 3 + 2 + 1)) * dp, "fake_score": forward * (2.5 + 3) * dp}
    peak = measured_matmul_tflops() * 1e12 * args.nproc
    result = {"gpus": args.nproc, "tp": args.tp, "cp": args.cp, "dp": dp, "sequence_parallel": args.sequence_parallel,
              "device": torch.cuda.get_device_name(), "tokens_per_sample": tokens,
              "matmul_tflops_per_gpu": peak / args.nproc / 1e12}
    for network in ("student", "fake_score"):
        seconds = [r["seconds"] for r in records if r["network"] == network][1:]
        if seconds:
            s = statistics.median(seconds)
            result[f"{network}_seconds"] = s
            result[f"{network}_tokens_per_second"] = dp * tokens / s
            result[f"{network}_mfu"] = flops[network] / s / peak
    result["peak_memory_gib"] = max(r.get("memory/peak_allocated_gib", 0.0) for r in records)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
