"""Preemption signals (megatron_rcm.training.signals), each case in processes of its own: a signal
to one rank stops all; every helper process started after the handler (spawn, fork, forkserver,
a multiprocessing manager like megatron-core's checkpoint helper) survives SIGUSR1 and SIGTERM;
a process leaving with status 75 keeps it under a stream of SIGTERM (srun --kill-on-bad-exit)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch.distributed as dist

from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.testing import run_distributed
from megatron_rcm.training.signals import PREEMPTED_EXIT_STATUS, preemption_handler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _signal_on_rank_one():
    handler = preemption_handler()
    with parallel_context(ParallelConfig()):
        first = handler.should_stop()
        if dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 30
            while handler.received is None and time.monotonic() < deadline:  # the watcher thread records it
                time.sleep(0.01)
        return first, handler.should_stop(), handler.received


def test_a_signal_on_one_rank_stops_all():
    assert run_distributed(_signal_on_rank_one, world_size=2) == [(False, True, None),
                                                                   (False, True, signal.SIGTERM)]


def _python(code, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


HELPERS = """
    import multiprocessing as mp, os, signal, time
    from megatron_rcm.training.signals import preemption_handler

    handler = preemption_handler()
    workers = [mp.get_context(m).Process(target=time.sleep, args=(60,)) for m in ("spawn", "fork", "forkserver")]
    for w in workers:
        w.start()
    manager = mp.get_context("spawn").Manager()  # what megatron-core's checkpoint writer keeps
    queue = manager.Queue()
    for pid in [w.pid for w in workers] + [manager._process.pid]:
        os.kill(pid, signal.SIGUSR1)
        os.kill(pid, signal.SIGTERM)
    time.sleep(2)
    queue.put("manager answers")
    print(queue.get(), [w.is_alive() for w in workers], handler.received)
    for w in workers:
        w.kill()
"""


def test_helper_processes_survive_the_preemption_signals():
    proc = _python(HELPERS)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split("\n")[0] == "manager answers [True, True, True] None"


REBLOCK = """
    import signal
    from megatron_rcm.training.signals import preemption_handler

    handler = preemption_handler()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handler.signals)  # as a library may leave the main thread
    handler.should_stop()
    print(handler.signals <= signal.pthread_sigmask(signal.SIG_BLOCK, []), handler.received)
"""


def test_each_step_boundary_blocks_the_signals_again():
    """The helpers that a trainer starts after a library unblocked the signals (megatron-core's checkpoint
    writer at its first save) must still inherit them blocked: ``should_stop`` blocks them again."""
    proc = _python(REBLOCK)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out == "True None\n", err


EXIT = f"""
    import signal, sys, time
    from megatron_rcm.training.signals import preemption_handler

    handler = preemption_handler()
    import torch  # threads and the rest of a trainer's set-up, after the handler
    if sys.argv[1] == "unblocked":  # as a library may leave the main thread (multiprocessing's resource tracker)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handler.signals)
    print("ready", flush=True)
    time.sleep(1)
    sys.exit({PREEMPTED_EXIT_STATUS})
"""


@pytest.mark.parametrize("mask", ["blocked", "unblocked"])
def test_exit_status_75_survives_srun_terminating_the_task(mask):
    """Also where the main thread takes the signals at interpreter exit, when Python resets its handlers."""
    proc = _python(EXIT, mask)
    assert proc.stdout.readline() == "ready\n"
    sent = 0
    while proc.poll() is None:
        proc.send_signal(signal.SIGTERM if sent % 2 else signal.SIGUSR1)
        sent += 1
        time.sleep(0.002)
    assert proc.returncode == PREEMPTED_EXIT_STATUS and sent > 10, (proc.returncode, sent, proc.stderr.read())
