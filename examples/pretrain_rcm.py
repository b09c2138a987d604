"""rCM distillation of a teacher of any model family on Megatron-core (see docs/training.md).

    torchrun --nproc_per_node 8 examples/pretrain_rcm.py --config examples/configs/wan1.3b_rcm.yaml \
        --teacher /ckpt/Wan2.1-T2V-1.3B-Diffusers --data-path '/data/shards/{000000..000099}.tar' \
        --negative-prompt-embedding /data/negative.pt --save /ckpt/rcm-1.3b

The family (Wan2.1, Cosmos-Predict2, ...) comes from the teacher checkpoint; ``--model PRESET``
(e.g. cosmos-predict2-2b, with image latents [16, 1, H/8, W/8] in the shards) also checks its shape.

Flags override the YAML config. SIGTERM / SIGUSR1 (Slurm preemption) finish the iteration,
save a checkpoint and exit with status 75 (EX_TEMPFAIL: not finished, run again); running the
same command again resumes from it. examples/slurm/pretrain_rcm.sbatch requeues on that status.
"""

import signal
import sys

from megatron_rcm import cli
from megatron_rcm.training.signals import PREEMPTED_EXIT_STATUS, preemption_handler


def main(argv=None):
    preemption = preemption_handler()  # first: from here on a signal means "save and stop", never a crash
    from megatron_rcm.data.latent_shards import ShardFormatError
    from megatron_rcm.training.arguments import ConfigError, load_config
    from megatron_rcm.training.batch_checks import NonFiniteDataError
    from megatron_rcm.training.checkpointing import CheckpointNotFoundError
    from megatron_rcm.training.loop import train

    argv = sys.argv[1:] if argv is None else argv
    errors = (ConfigError, CheckpointNotFoundError, ShardFormatError, NonFiniteDataError, OSError)
    with cli.one_line_errors("pretrain_rcm", errors, debug="--debug" in argv):
        config = load_config(argv)
        progress = train(config)
    if progress.iteration < config.train_iters:
        saved = ("saved it; the same command resumes from there" if config.checkpoint.save
                 else "nothing saved (no --save)")
        # every rank stops when any one got the signal
        cause = signal.Signals(preemption.received).name if preemption.received else "another rank's signal"
        print(f"pretrain_rcm: {cause}: stopped after iteration {progress.iteration}, {saved}", file=sys.stderr,
              flush=True)
        return PREEMPTED_EXIT_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
