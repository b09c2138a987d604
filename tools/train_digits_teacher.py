"""Train the tiny Wan-architecture Moving Digits teacher with rectified flow, on CPU, one process.

    nice -n 10 .venv/bin/python tools/train_digits_teacher.py --out assets/moving_digits/teacher \
        2>&1 | tee assets/moving_digits/teacher_train.log

RF (docs/math.md section 1): x_s = (1 - s) x0 + s eps, target v = eps - x0, the network sees 1000 s;
s is logit-normal (mean 0, std 1). Every step draws fresh training videos (seeded by the step);
``--uncond-prob`` of the samples get the negative-prompt embedding, which trains the
unconditional branch of classifier-free guidance. The exported weights are an EMA of the
iterates, written as a diffusers ``WanTransformer3DModel`` folder (``megatron_rcm.load_model``
reads it).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from megatron_rcm.data.moving_digits import MovingDigitsSpec, make_videos
from megatron_rcm.data.toy_text_encoder import ToyTextEncoder
from megatron_rcm.models.wan import WanModel, load_diffusers_weights, save_diffusers_folder, wan_config
from megatron_rcm.parallel import ParallelConfig, parallel_context

# 64 tokens (4 x 4 x 4 patches of 2 frames x 4 x 4 pixels), 2 heads of 32: small enough to train in
# minutes on a shared 2-core CPU, and for the distillation's JVP under TRITON_INTERPRET
DIGITS_TEACHER = dict(hidden_size=64, num_attention_heads=2, kv_channels=32, ffn_hidden_size=256, num_layers=4,
                      in_channels=1, out_channels=1, patch_size=(2, 4, 4), text_dim=32, freq_dim=64,
                      layernorm_epsilon=1e-6, cross_attn_norm=True)


def rf_loss(model, x0, text, gen):
    s = torch.sigmoid(torch.randn(x0.shape[0], generator=gen))
    eps = torch.randn(x0.shape, generator=gen)
    sb = s.view(-1, 1, 1, 1, 1)
    v = model((1 - sb) * x0 + sb * eps, 1000 * s, text)
    return (v - (eps - x0)).square().mean()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--init", help="continue from this diffusers folder (weights only; fresh optimizer and warm-up)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=None, help="stop early after this wall time")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--uncond-prob", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec, encoder = MovingDigitsSpec(), ToyTextEncoder()
    negative = encoder.negative()
    print(json.dumps({"args": vars(args), "model": DIGITS_TEACHER, "spec": spec.__dict__,
                      "text": {"text_dim": encoder.text_dim, "length": encoder.length}}), flush=True)
    with parallel_context(ParallelConfig(), seed=args.seed + 1):
        config = wan_config("tiny-a", **DIGITS_TEACHER, use_cpu_initialization=True)
        model, ema = WanModel(config), WanModel(config).requires_grad_(False)
        if args.init:
            load_diffusers_weights(model, args.init)
        ema.load_state_dict(model.state_dict())
        print(f"parameters: {sum(p.numel() for p in model.parameters())}", flush=True)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
        # linear warm-up, then constant: the EMA does the averaging, so a run stopped by --minutes is complete
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / args.warmup))
        gen = torch.Generator().manual_seed(args.seed)
        start, running = time.time(), 0.0
        for step in range(1, args.steps + 1):
            batch = make_videos("train", args.batch, seed=1_000_000 * args.seed + step, spec=spec)
            text = encoder.encode_batch(batch.prompts)
            drop = torch.rand(args.batch, generator=gen) < args.uncond_prob
            text[drop] = negative
            loss = rf_loss(model, batch.videos, text, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - args.ema)
            running += loss.item()
            if step % 25 == 0 or step == args.steps:
                print(f"step {step:5d}  loss {running / 25:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                      f"{time.time() - start:.0f}s", flush=True)
                running = 0.0
            if args.minutes is not None and time.time() - start > 60 * args.minutes:
                print(f"stopping at step {step}: the {args.minutes} minute budget is spent", flush=True)
                break
        save_diffusers_folder(ema, args.out)
        print(f"saved the EMA weights to {args.out} after {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
