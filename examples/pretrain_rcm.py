"""rCM distillation of a Wan2.1 teacher on Megatron-core (see docs/training.md).

    torchrun --nproc_per_node 8 examples/pretrain_rcm.py --config examples/configs/wan1.3b_rcm.yaml \
        --teacher /ckpt/Wan2.1-T2V-1.3B-Diffusers --data-path '/data/shards/{000000..000099}.tar' \
        --negative-prompt-embedding /data/negative.pt --save /ckpt/rcm-1.3b

Flags override the YAML config. SIGTERM / SIGUSR1 (Slurm preemption) finish the iteration,
save a checkpoint and exit; running the same command again resumes from it.
"""

import sys

from megatron_rcm.training.arguments import ConfigError, parse_args
from megatron_rcm.training.loop import train


def main(argv=None):
    try:
        train(parse_args(argv))
    except ConfigError as e:
        sys.exit(f"configuration error: {e}")


if __name__ == "__main__":
    main()
