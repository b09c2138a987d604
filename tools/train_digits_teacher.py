"""Train the tiny Wan-architecture Moving Digits teacher with rectified flow, one process, on the
GPU when there is one (the CPU otherwise).

    nice -n 10 .venv/bin/python tools/train_digits_teacher.py --out assets/moving_digits/teacher \
        2>&1 | tee assets/moving_digits/teacher_train.log
    # on a GPU: larger batches, a cosine decay over the time budget, the FD curve on the val split
    python tools/train_digits_teacher.py --out runs/teacher --batch 128 --steps 100000 --minutes 4 \
        --lr-min 1e-4 --workers 4 --eval-every 1000

RF (docs/math.md section 1): x_s = (1 - s) x0 + s eps, target v = eps - x0, the network sees 1000 s;
s is logit-normal (mean 0, std 1). Every step draws fresh training videos (seeded by the step);
``--uncond-prob`` of the samples get the negative-prompt embedding, which trains the
unconditional branch of classifier-free guidance. The exported weights are an EMA of the
iterates, written as a diffusers ``WanTransformer3DModel`` folder (``megatron_rcm.load_model``
reads it). ``--eval-every`` prints a JSON line with the EMA's quality on the val split (RF Euler
50 steps, CFG 2.5, sampling seed 100: the study's validation seed) every that many steps.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from megatron_rcm import cli
from megatron_rcm.data.moving_digits import MovingDigitsSpec, make_videos
from megatron_rcm.data.toy_text_encoder import ToyTextEncoder

# 64 tokens (4 x 4 x 4 patches of 2 frames x 4 x 4 pixels), 2 heads of 32: small enough to train in
# minutes on a shared 2-core CPU, and for the distillation's JVP under TRITON_INTERPRET
DIGITS_TEACHER = dict(hidden_size=64, num_attention_heads=2, kv_channels=32, ffn_hidden_size=256, num_layers=4,
                      in_channels=1, out_channels=1, patch_size=(2, 4, 4), text_dim=32, freq_dim=64,
                      layernorm_epsilon=1e-6, cross_attn_norm=True)


VALIDATION_SEED = 100


def rf_loss(model, x0, text, gen):
    s = torch.sigmoid(torch.randn(x0.shape[0], generator=gen)).to(x0.device)
    eps = torch.randn(x0.shape, generator=gen).to(x0.device)
    sb = s.view(-1, 1, 1, 1, 1)
    v = model((1 - sb) * x0 + sb * eps, 1000 * s, text)
    return (v - (eps - x0)).square().mean()


class _Batches(torch.utils.data.Dataset):
    """Step k's fresh training batch (videos, prompt embeddings), a function of (seed, k) only."""

    def __init__(self, batch, seed, spec, encoder):
        self.batch, self.seed, self.spec, self.encoder = batch, seed, spec, encoder

    def __len__(self):
        return 1 << 40

    def __getitem__(self, step):
        batch = make_videos("train", self.batch, seed=1_000_000 * self.seed + step, spec=self.spec)
        return batch.videos, self.encoder.encode_batch(batch.prompts)


def validation_metrics(model, classifier, reference):
    """The EMA's accuracy, FD and diversity on the val split (50 Euler steps, CFG 2.5)."""
    from megatron_rcm.data.moving_digits import prompt_grid
    from megatron_rcm.evaluation.digits import generate, video_metrics

    digits, directions = prompt_grid(2)
    videos = generate(model, "euler", digits, directions, VALIDATION_SEED, 50, cfg=2.5)
    return video_metrics(classifier, videos, digits, directions, reference)


def learning_rate_factor(step, elapsed, args):
    """Linear warm-up, then a cosine from 1 to lr_min / lr over the budget (the steps or, if
    shorter, the wall time of --minutes); constant when lr_min equals lr."""
    if step < args.warmup:
        return (step + 1) / args.warmup
    progress = step / args.steps
    if args.minutes is not None:
        progress = max(progress, elapsed / (60 * args.minutes))
    floor = args.lr_min / args.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True,
                   help="folder the EMA weights are written to at the end, as a diffusers folder (required)")
    p.add_argument("--init", help="continue from this diffusers folder (weights only; fresh optimizer and "
                                  "warm-up) (default: random weights)")
    p.add_argument("--steps", type=cli.positive_int, default=3000,
                   help="optimizer steps, the length of the cosine decay (default: %(default)s)")
    p.add_argument("--minutes", type=cli.positive_float,
                   help="stop early after this wall time, also the length of the cosine decay if it ends "
                        "first (default: none, --steps alone)")
    p.add_argument("--batch", type=cli.positive_int, default=32,
                   help="fresh training videos per step (default: %(default)s)")
    p.add_argument("--lr", type=cli.positive_float, default=1e-3,
                   help="AdamW learning rate after the warm-up (default: %(default)s)")
    p.add_argument("--warmup", type=cli.non_negative_int, default=50,
                   help="steps of linear learning-rate warm-up (0: none; default: %(default)s)")
    p.add_argument("--ema", type=float, default=0.995,
                   help="decay of the exported EMA of the weights, in [0, 1) (default: %(default)s)")
    p.add_argument("--uncond-prob", type=float, default=0.1,
                   help="fraction of the samples trained on the negative-prompt embedding, the CFG "
                        "unconditional branch, in [0, 1] (default: %(default)s)")
    p.add_argument("--threads", type=cli.positive_int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--seed", type=cli.non_negative_int, default=0,
                   help="seed of the initial weights, the training videos and the noise, >= 0 (default: %(default)s)")
    p.add_argument("--lr-min", type=float,
                   help="cosine decay to this learning rate, 0 to --lr (default: --lr, constant)")
    p.add_argument("--workers", type=cli.non_negative_int, default=0,
                   help="data-loader processes rendering the batches (0: this process; default: %(default)s)")
    p.add_argument("--eval-every", type=cli.non_negative_int, default=0,
                   help="steps between val-split evaluations of the EMA (0: none; default: %(default)s)")
    return p


def _check(parser, args):
    """One line for each input training would otherwise fail on, or waste its time on, before it starts."""
    if args.init is not None and not (Path(args.init) / "config.json").is_file():
        parser.error(f"--init {args.init}: no config.json there (a diffusers model folder)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file, not a folder")
    if args.lr_min is not None and not 0 <= args.lr_min <= args.lr:
        parser.error(f"--lr-min must be between 0 and --lr ({args.lr:g}), not {args.lr_min:g}")
    if not 0 <= args.ema < 1:
        parser.error(f"--ema must be in [0, 1) (1 never moves the exported weights), not {args.ema:g}")
    if not 0 <= args.uncond_prob <= 1:
        parser.error(f"--uncond-prob is a probability, in [0, 1], not {args.uncond_prob:g}")


def train(args):
    # megatron-core loads here, after the flags are checked: a wrong one is refused at once
    from megatron_rcm.models.wan import WanModel, load_diffusers_weights, save_diffusers_folder, wan_config
    from megatron_rcm.parallel import ParallelConfig, current_device, parallel_context

    torch.set_num_threads(args.threads)
    spec, encoder = MovingDigitsSpec(), ToyTextEncoder()
    negative = encoder.negative()
    print(json.dumps({"args": vars(args), "model": DIGITS_TEACHER, "spec": spec.__dict__,
                      "text": {"text_dim": encoder.text_dim, "length": encoder.length}}), flush=True)
    with parallel_context(ParallelConfig(), seed=args.seed + 1):
        device = current_device()
        config = wan_config("tiny-a", **DIGITS_TEACHER, use_cpu_initialization=device.type == "cpu")
        model, ema = WanModel(config), WanModel(config).requires_grad_(False)
        if args.init:
            load_diffusers_weights(model, args.init)
        ema.load_state_dict(model.state_dict())
        print(f"parameters: {sum(p.numel() for p in model.parameters())}  device: {device}", flush=True)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
        # the EMA does the averaging, so a run stopped by --minutes is complete
        if args.eval_every:
            from megatron_rcm.evaluation.digits import classify, load_classifier, reference_videos

            classifier = load_classifier()
            reference = classify(classifier, reference_videos("val"))[0]
        batches = torch.utils.data.DataLoader(_Batches(args.batch, args.seed, spec, encoder), batch_size=None,
                                              sampler=range(1, args.steps + 1), num_workers=args.workers,
                                              prefetch_factor=4 if args.workers else None)
        gen = torch.Generator().manual_seed(args.seed)
        start, running = time.time(), 0.0
        for step, (videos, text) in enumerate(batches, start=1):
            for group in opt.param_groups:
                group["lr"] = args.lr * learning_rate_factor(step - 1, time.time() - start, args)
            drop = torch.rand(args.batch, generator=gen) < args.uncond_prob
            text[drop] = negative
            loss = rf_loss(model, videos.to(device), text.to(device), gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - args.ema)
            running += loss.item()
            if step % 25 == 0 or step == args.steps:
                print(f"step {step:5d}  loss {running / 25:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                      f"{time.time() - start:.0f}s", flush=True)
                running = 0.0
            out_of_time = args.minutes is not None and time.time() - start > 60 * args.minutes
            if args.eval_every and (step % args.eval_every == 0 or out_of_time or step == args.steps):
                metrics = validation_metrics(ema.eval(), classifier, reference)
                print(json.dumps({"eval_step": step, "seconds": round(time.time() - start, 1), **metrics}), flush=True)
            if out_of_time:
                print(f"stopping at step {step}: the {args.minutes} minute budget is spent", flush=True)
                break
        save_diffusers_folder(ema, args.out)
        print(f"saved the EMA weights to {args.out} after {time.time() - start:.0f}s", flush=True)


def main():
    parser = build_parser()
    args = parser.parse_args()
    _check(parser, args)
    args.lr_min = args.lr if args.lr_min is None else args.lr_min
    train(args)


if __name__ == "__main__":
    main()
