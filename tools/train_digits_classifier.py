"""Train the Moving Digits digit/direction classifier used by the evaluation metrics.

    nice -n 10 .venv/bin/python tools/train_digits_classifier.py \
        2>&1 | tee assets/moving_digits/classifier_train.log

Trains on fresh real train-split videos each step (seeded by the step), reports accuracy on
held-out test-split videos (source images never seen in training), and writes the weights to
``megatron_rcm.evaluation.digits.DEFAULT_WEIGHTS``.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from megatron_rcm.data.moving_digits import make_videos
from megatron_rcm.evaluation.digits import DEFAULT_WEIGHTS, DigitsClassifier, classify, prompt_accuracy


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--test-videos", type=int, default=4000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(vars(args), flush=True)
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
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
