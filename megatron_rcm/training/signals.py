"""Slurm preemption: turn SIGTERM / SIGUSR1 into a flag that all ranks agree on at a step boundary."""

import signal

import torch
import torch.distributed as dist

from ..parallel import current_device

# sysexits.h EX_TEMPFAIL ("try again later"): the trainer stopped on a signal after saving, and
# the same command resumes; examples/slurm/pretrain_rcm.sbatch requeues the job on it
PREEMPTED_EXIT_STATUS = 75


class PreemptionHandler:
    """Records that a signal arrived; ``should_stop()`` is collective and true on all ranks if any saw one.

    The handler only sets a flag: the iteration in progress finishes, then the trainer saves a
    checkpoint and exits. Use as a context manager to restore the previous handlers.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.signals = tuple(signals)
        self.received = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signum

    def __enter__(self):
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def should_stop(self) -> bool:
        flag = torch.tensor([0 if self.received is None else 1], dtype=torch.int32, device=current_device())
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
