"""rCM distillation of a Wan2.1 teacher on Megatron-core (see docs/training.md).

    torchrun --nproc_per_node 8 examples/pretrain_rcm.py --config examples/configs/wan1.3b_rcm.yaml \
        --teacher /ckpt/Wan2.1-T2V-1.3B-Diffusers --data-path '/data/shards/{000000..000099}.tar' \
        --negative-prompt-embedding /data/negative.pt --save /ckpt/rcm-1.3b

Flags override the YAML config. SIGTERM / SIGUSR1 (Slurm preemption) finish the iteration,
save a checkpoint and exit with status 75 (EX_TEMPFAIL: not finished, run again); running the
same command again resumes from it. examples/slurm/pretrain_rcm.sbatch requeues on that status.
"""

import sys

from megatron_rcm.training.arguments import ConfigError, load_config
from megatron_rcm.training.loop import train
from megatron_rcm.training.signals import PREEMPTED_EXIT_STATUS


def main(argv=None):
    try:
        config = load_config(argv)
        progress = train(config)
    except ConfigError as e:
        sys.exit(f"configuration error: {e}")
    if progress.iteration < config.train_iters:
        sys.exit(PREEMPTED_EXIT_STATUS)


if __name__ == "__main__":
    main()
