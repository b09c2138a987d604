"""A tiny random diffusers teacher, synthetic shards and a negative-prompt embedding, a
torchrun launcher for examples/pretrain_rcm.py, and what two runs' logs are compared on."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from megatron_rcm.data.synthetic import write_synthetic_shards
from megatron_rcm.models import family_of_preset

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "pretrain_rcm.py"
TINY_CONFIG = ROOT / "examples" / "configs" / "tiny_cpu.yaml"
PRESET = "tiny-a"
LATENT = (2, 4, 4)  # frames, height, width: 8 tokens at patch (1, 2, 2)
TEXT_LEN = 3


def make_inputs(folder, seed=0, preset=PRESET, latent=LATENT):
    """Teacher folder (a random diffusers transformer of ``preset``, any family), shard folder of
    ``latent``-sized latents and negative embedding under ``folder``; returns flags for them."""
    import diffusers

    folder = Path(folder)
    family = family_of_preset(preset)
    cfg = family.config_class.from_preset(preset)
    kwargs = family.diffusers_config(cfg)
    torch.manual_seed(seed)
    teacher = getattr(diffusers, kwargs.pop("_class_name"))(**kwargs)
    with torch.no_grad():  # diffusers starts some weights at zero or one: make every weight matter
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    teacher.save_pretrained(folder / "teacher")
    write_synthetic_shards(folder / "data", num_samples=12, samples_per_shard=5, latent_shape=(cfg.in_channels, *latent),
                           text_shape=(TEXT_LEN, cfg.text_dim), seed=seed + 1, dtype=torch.float32)
    torch.save(torch.randn(TEXT_LEN, cfg.text_dim, generator=torch.Generator().manual_seed(seed + 2)),
               folder / "negative.pt")
    return ["--config", str(TINY_CONFIG), "--teacher", str(folder / "teacher"), "--data-path", str(folder / "data"),
            "--negative-prompt-embedding", str(folder / "negative.pt")]


def torchrun_command(nproc, flags):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(SCRIPT), *flags]


def torchrun_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"  # the attention kernels on CPU tensors
    return env


def torchrun(nproc, flags, timeout=240):
    """Run the training script on ``nproc`` local ranks; raises with its output if it fails."""
    result = subprocess.run(torchrun_command(nproc, flags), env=torchrun_env(), cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"training exited with {result.returncode}:\n{result.stdout[-5000:]}\n"
                             f"{result.stderr[-8000:]}")
    return result


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


LOSSES = ("loss/student", "loss/scm", "loss/dmd", "loss/fake_score")


def compared(records):
    """What two runs that should train alike are compared on, per logged iteration: the losses, and
    the updated network's gradient norm. The losses alone would not see a gradient scaled by a
    constant (a CP or DP factor missed): Adam's update does not change with it."""
    return [{k: r[k] for k in (*LOSSES, f"{r['network']}/grad_norm") if k in r} for r in records]


def assert_close(records, reference, rtol):
    """``compared(records)`` within ``rtol`` of the reference's, at the same iterations."""
    assert [r["iteration"] for r in records] == [r["iteration"] for r in reference]
    for got, want in zip(compared(records), compared(reference)):
        assert got.keys() == want.keys()
        for k in got:
            assert math.isclose(got[k], want[k], rel_tol=rtol, abs_tol=0.0), (k, got[k], want[k])
