"""Train the Moving Digits digit/direction classifier used by the evaluation metrics.

    nice -n 10 .venv/bin/python tools/train_digits_classifier.py \
        2>&1 | tee assets/moving_digits/classifier_train.log

Trains on fresh real train-split videos each step (seeded by the step), reports accuracy on
held-out test-split videos (source images never seen in training), and writes the weights to
``megatron_rcm.evaluation.digits.DEFAULT_WEIGHTS``.
"""

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from megatron_rcm import cli
from megatron_rcm.data.moving_digits import make_videos
from megatron_rcm.evaluation.digits import DEFAULT_WEIGHTS, DigitsClassifier, classify, prompt_accuracy


ONE_CYCLE_WARMUP = 0.1  # OneCycleLR's pct_start: the fraction of the steps the learning rate rises


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_WEIGHTS),
                   help="safetensors file the weights are written to, in a folder that exists (default: "
                        "assets/moving_digits/classifier.safetensors, the one the metrics load)")
    p.add_argument("--steps", type=cli.positive_int, default=3000,
                   help="optimizer steps of the one-cycle schedule (default: %(default)s)")
    p.add_argument("--batch", type=cli.positive_int, default=64,
                   help="fresh training videos per step (default: %(default)s)")
    p.add_argument("--lr", type=cli.positive_float, default=2e-3,
                   help="peak AdamW learning rate of the one-cycle schedule (default: %(default)s)")
    p.add_argument("--test-videos", type=cli.positive_int, default=4000,
                   help="held-out test-split videos the accuracy is reported on (default: %(default)s)")
    p.add_argument("--threads", type=cli.positive_int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights and the training and held-out videos (default: %(default)s)")
    return p


def _check(parser, args):
    """One line for each input training would otherwise fail on, before it starts."""
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        parser.error(f"--out {args.out}: not a file in a folder that exists")
    if args.steps * ONE_CYCLE_WARMUP == 1:
        parser.error(f"--steps {args.steps}: torch's OneCycleLR divides by zero when its warm-up is one step; "
                     "take one step more or less")


def main():
    parser = build_parser()
    args = parser.parse_args()
    _check(parser, args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(vars(args), flush=True)
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                pct_start=ONE_CYCLE_WARMUP)
    # seeds below 1e6 are the training stream; the held-out set uses a seed outside it (and another split)
    test = make_videos("test", args.test_videos, seed=10_000_000 + args.seed)
    start = time.time()
    for step in range(1, args.steps + 1):
        batch = make_videos("train", args.batch, seed=1_000 * args.seed + step)
        digit_logits, direction_logits = model(batch.videos)
        loss = F.cross_entropy(digit_logits, batch.digits) + F.cross_entropy(direction_logits, batch.directions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps:
            model.eval()
            _, digit_pred, direction_pred = classify(model, test.videos)
            model.train()
            acc = prompt_accuracy(digit_pred, direction_pred, test.digits, test.directions)
            print(f"step {step:5d}  loss {loss.item():.4f}  held-out " +
                  "  ".join(f"{k} {v:.4f}" for k, v in acc.items()) + f"  {time.time() - start:.0f}s", flush=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out)
    print(f"saved {args.out}", flush=True)


if __name__ == "__main__":
    main()
