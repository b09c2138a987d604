"""Write Moving Digits training shards and the negative-prompt embedding for examples/pretrain_rcm.py.

    .venv/bin/python tools/make_digits_shards.py --out /tmp/moving_digits
    # then: --data-path /tmp/moving_digits --negative-prompt-embedding /tmp/moving_digits/negative_prompt.pt
    #       --teacher assets/moving_digits/teacher

Real train-split videos ([1, 8, 16, 16], latent = pixels) with the toy text encoder's embeddings,
so the shards match the shipped teacher.
"""

import argparse
from pathlib import Path

from megatron_rcm import cli
from megatron_rcm.data.toy_text_encoder import write_training_data


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True,
                   help="folder the shards and negative_prompt.pt are written to, made if missing (required)")
    p.add_argument("--num-samples", type=cli.positive_int, default=8192,
                   help="training videos to write (default: %(default)s)")
    p.add_argument("--samples-per-shard", type=cli.positive_int, default=1024,
                   help="videos per shard file (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the videos (default: %(default)s)")
    return p


def _check(parser, args):
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file, not a folder")


def main():
    parser = build_parser()
    args = parser.parse_args()
    _check(parser, args)
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:  # no permission, a file above it
        parser.error(f"--out {args.out} cannot be made a folder ({e})")
    with cli.one_line_errors("make_digits_shards", (OSError,)):  # a full disk
        negative = write_training_data(args.out, args.num_samples, args.samples_per_shard, seed=args.seed)
    print(f"wrote {args.num_samples} samples to {args.out} and {negative}")


if __name__ == "__main__":
    main()
