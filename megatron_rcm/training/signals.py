"""Slurm preemption: SIGTERM / SIGUSR1 become a flag that all ranks agree on at a step boundary.

Slurm signals every process of the job step, not only the trainer: the data-loader workers,
megatron-core's checkpoint writer (a multiprocessing manager it spawns at the first save and
keeps) and whatever else torch starts. A helper killed by the signal breaks the checkpoint that
the trainer is about to write. So ``preemption_handler()`` blocks the two signals in the main
thread before the trainer starts any thread or process: every helper inherits the blocked mask
(through fork, spawn and exec alike) and a signal sent to it stays pending, harmless. The trainer
itself takes them in one watcher thread (``sigwait``). multiprocessing's resource tracker unblocks
SIGTERM in the thread that starts it, so it is started first and the mask is set again at every
step boundary. At interpreter exit the signals become ignored: Python then resets handlers to the
default action, which would end a rank that is leaving with status 75.

The handler stays for the rest of the process's life: a second signal, a signal during the
preemption save, or srun's SIGTERM to the remaining tasks once one task has exited 75
(``--kill-on-bad-exit``) cannot kill a rank that is saving or leaving with status 75.
"""

import atexit
import signal
import threading
from multiprocessing import resource_tracker

# sysexits.h EX_TEMPFAIL ("try again later"): the trainer stopped on a signal after saving, and
# the same command resumes; examples/slurm/pretrain_rcm.sbatch requeues the job on it
PREEMPTED_EXIT_STATUS = 75
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_HANDLER = None


class PreemptionHandler:
    """Records the last preemption signal; ``should_stop()`` is collective and true on all ranks
    if any saw one. The iteration in progress finishes, then the trainer saves and exits."""

    def __init__(self, signals=PREEMPTION_SIGNALS):
        self.signals = frozenset(signals)
        self.received = None

    def _record(self, signum, frame=None):
        self.received = signum

    def _watch(self):
        while True:
            self._record(signal.sigwait(self.signals))

    def _block(self):
        signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)

    def _ignore(self):
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)

    def install(self):
        # a thread that does not block the signals (one that existed before, or the main thread
        # after a library unblocked them) still reaches a handler that records, never the default
        # action that would end the process
        for sig in self.signals:
            signal.signal(sig, self._record)
        self._block()
        resource_tracker.ensure_running()  # inherits the mask, then unblocks SIGTERM here
        self._block()
        threading.Thread(target=self._watch, name="preemption-signals", daemon=True).start()
        atexit.register(self._ignore)
        return self

    def should_stop(self) -> bool:
        self._block()  # again: the helpers started from here on must inherit it
        import torch
        import torch.distributed as dist

        from ..parallel import current_device

        flag = torch.tensor([0 if self.received is None else 1], dtype=torch.int32, device=current_device())
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def preemption_handler() -> PreemptionHandler:
    """This process's handler, installed at the first call (from the main thread, before any
    helper thread or process starts: entry points call it first)."""
    global _HANDLER
    if _HANDLER is None:
        _HANDLER = PreemptionHandler().install()
    return _HANDLER


def stop_loader_workers(batches):
    """Stop the worker processes of a DataLoader iterator now, on success or error.

    The workers block the preemption signals, so torch's fallback (SIGTERM to a worker that did
    not exit when told) cannot stop one, and interpreter exit would then wait on it forever.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is None:  # no worker processes (num_workers=0)
        return
    shutdown()
    for worker in batches._workers:
        if worker.is_alive():
            worker.kill()
        worker.join()
