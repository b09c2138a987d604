#!/usr/bin/env python
"""Peak host memory of checkpoint conversion, against the model size.

    python tools/bench_convert_memory.py --layers 15 --dim 1024 --ffn 4096   # ~1.1 GB float32 model

Writes a random diffusers folder of that shape (streamed, so the writer itself stays small), then
runs each conversion in a fresh subprocess: diffusers -> megatron (TP=2 layout), megatron ->
diffusers, diffusers -> wan, wan -> diffusers. Each subprocess samples its own RSS and anonymous
RSS (``/proc/self/status``) every 5 ms and reports the peaks above its RSS after imports.
Anonymous memory is what the conversion allocates; RSS also counts the pages of memory-mapped
input files it has touched, which the kernel drops under pressure.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_rcm import cli

_CHILD = r"""
import json, sys, threading, time
from megatron_rcm.convert.api import convert_checkpoint

def sample():
    fields = {}
    for line in open("/proc/self/status"):
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            fields[name] = int(value.split()[0]) * 1024
    return fields

base = sample()
peak = dict(base)
done = threading.Event()

def watch():
    while not done.is_set():
        for k, v in sample().items():
            peak[k] = max(peak[k], v)
        time.sleep(0.005)

thread = threading.Thread(target=watch)
thread.start()
start = time.time()
convert_checkpoint(*sys.argv[1:5], tensor_parallel_size=int(sys.argv[5]), progress=False)
done.set()
thread.join()
print(json.dumps({"seconds": time.time() - start, "rss": peak["VmRSS"] - base["VmRSS"],
                  "anon": peak["RssAnon"] - base["RssAnon"]}))
"""


def _random_diffusers(folder, layers, dim, ffn, text_dim=4096):
    import torch

    from megatron_rcm.convert.tensor_files import TensorInfo, write_safetensors_shards
    from megatron_rcm.convert.wan_native import DIFFUSERS_WEIGHTS, expected_diffusers_shapes

    cfg = {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "num_attention_heads": dim // 128,
           "attention_head_dim": 128, "in_channels": 16, "out_channels": 16, "text_dim": text_dim, "freq_dim": 256,
           "ffn_dim": ffn, "num_layers": layers, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
           "eps": 1e-6, "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": 1024}
    infos = {k: TensorInfo(s, torch.float32) for k, s in expected_diffusers_shapes(cfg).items()}
    folder.mkdir()
    write_safetensors_shards(folder, DIFFUSERS_WEIGHTS, infos, lambda key: torch.randn(infos[key].shape),
                             max_shard_bytes=2**30)
    (folder / "config.json").write_text(json.dumps(cfg))
    return sum(i.nbytes for i in infos.values())


def _measure(source, target, inp, out, tp=1):
    result = subprocess.run([sys.executable, "-c", _CHILD, source, target, str(inp), str(out), str(tp)],
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=cli.positive_int, default=15,
                        help="transformer blocks of the random model (default: %(default)s)")
    parser.add_argument("--dim", type=cli.positive_int, default=1024,
                        help="hidden size, a multiple of 128 (heads of 128) (default: %(default)s)")
    parser.add_argument("--ffn", type=cli.positive_int, default=4096,
                        help="feed-forward hidden size (default: %(default)s)")
    parser.add_argument("--workdir", help="existing folder the scratch folder is made in (default: the system's "
                                          "temporary folder)")
    return parser


def _check(parser, args):
    if args.dim % 128:
        parser.error(f"--dim must be a multiple of 128 (the head size), not {args.dim}")
    if args.workdir is not None and not Path(args.workdir).is_dir():
        parser.error(f"--workdir {args.workdir} is not a folder")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        size = _random_diffusers(tmp / "diffusers", args.layers, args.dim, args.ffn)
        runs = [("diffusers", "megatron", "diffusers", "megatron", 2), ("megatron", "diffusers", "megatron", "back", 1),
                ("diffusers", "wan", "diffusers", "wan", 1), ("wan", "diffusers", "wan", "wan_back", 1)]
        print(f"model: {size / 2**20:.0f} MiB float32 ({args.layers} layers, dim {args.dim}, ffn {args.ffn})")
        print("| conversion | time (s) | peak RSS above imports (MiB) | peak anonymous (MiB) | anonymous / model |")
        print("|---|---|---|---|---|")
        for source, target, inp, out, tp in runs:
            m = _measure(source, target, tmp / inp, tmp / out, tp)
            name = f"{source} -> {target}" + (f" (TP={tp} layout)" if tp > 1 else "")
            print(f"| {name} | {m['seconds']:.1f} | {m['rss'] / 2**20:.0f} | {m['anon'] / 2**20:.0f} | "
                  f"{m['anon'] / size:.3f} |")


if __name__ == "__main__":
    main()
