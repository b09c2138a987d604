"""Write Moving Digits training shards and the negative-prompt embedding for examples/pretrain_rcm.py.

    .venv/bin/python tools/make_digits_shards.py --out /tmp/moving_digits
    # then: --data-path /tmp/moving_digits --negative-prompt-embedding /tmp/moving_digits/negative_prompt.pt
    #       --teacher assets/moving_digits/teacher

Real train-split videos ([1, 8, 16, 16], latent = pixels) with the toy text encoder's embeddings,
so the shards match the shipped teacher.
"""

import argparse

from megatron_rcm.data.toy_text_encoder import write_training_data


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--num-samples", type=int, default=8192)
    p.add_argument("--samples-per-shard", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    negative = write_training_data(args.out, args.num_samples, args.samples_per_shard, seed=args.seed)
    print(f"wrote {args.num_samples} samples to {args.out} and {negative}")


if __name__ == "__main__":
    main()
