"""Write Moving Digits training shards and the negative-prompt embedding for examples/pretrain_rcm.py.

    .venv/bin/python tools/make_digits_shards.py --out /tmp/moving_digits
    # then: --data-path /tmp/moving_digits --negative-prompt-embedding /tmp/moving_digits/negative_prompt.pt
    #       --teacher assets/moving_digits/teacher

Real train-split videos ([1, 8, 16, 16], latent = pixels) with the toy text encoder's embeddings,
so the shards match the shipped teacher.
"""

import argparse
from pathlib import Path

import torch

from megatron_rcm.data.moving_digits import write_moving_digits_shards
from megatron_rcm.data.toy_text_encoder import ToyTextEncoder


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--num-samples", type=int, default=8192)
    p.add_argument("--samples-per-shard", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    encoder = ToyTextEncoder()
    paths = write_moving_digits_shards(args.out, "train", args.num_samples, args.samples_per_shard, encoder,
                                       seed=args.seed)
    negative = Path(args.out) / "negative_prompt.pt"
    torch.save(encoder.negative(), negative)
    print(f"wrote {args.num_samples} samples in {len(paths)} shards and {negative}")


if __name__ == "__main__":
    main()
