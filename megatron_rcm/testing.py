"""Test helpers: the two error metrics tests and benchmarks compare with, and ``run_distributed``,
which runs a test body on N local ranks (gloo on CPU, NCCL on GPU), with readable failures and no hangs.

    def _body(tp):                       # module level, so that it pickles
        with parallel_context(ParallelConfig(tensor_model_parallel_size=tp)):
            ...

    def test_something():
        run_distributed(_body, world_size=2, args=(2,))

Each rank runs in its own process with torchrun's variables set (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), so the body initialises the runtime exactly as a training script does.
If a rank raises, the others are stopped and the failing rank's traceback is raised here; if
the ranks do not all finish within ``timeout`` seconds, they are killed and the error says which
ranks were still running. Returns the ranks' return values in rank order.
"""

import multiprocessing as mp
import os
import pickle
import queue as queue_lib
import signal
import time
import traceback

import torch

from megatron_rcm.parallel.runtime import free_port

_CONTEXT = None


class DistributedTestError(AssertionError):
    """A rank failed or hung."""


def _context():
    # A forkserver imports torch and megatron-core once; each rank is then a cheap fork of a
    # clean, single-threaded process (forking the pytest process itself is unsafe with OpenMP).
    # With GPUs, ranks are spawned: CUDA cannot be used in a forked process once the parent has
    # initialised it, which the preloaded imports may do (seen on the GPU machines).
    global _CONTEXT
    if _CONTEXT is None:
        if torch.cuda.is_available():
            _CONTEXT = mp.get_context("spawn")
        else:
            _CONTEXT = mp.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(["torch", "megatron.core.parallel_state", "megatron_rcm.parallel"])
    return _CONTEXT


def _rank_main(fn, rank, world_size, port, results, args, kwargs, threads):
    # a process group of its own, so that the helper processes a rank starts (checkpoint writers'
    # managers, data workers) can be stopped with it
    os.setpgrp()
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import faulthandler

    import torch

    from megatron_rcm.parallel import destroy_parallel

    faulthandler.enable()

    torch.set_num_threads(threads)
    try:
        # plain pickle sends tensors by value: torch's queue reducers would share memory that
        # disappears when this process exits
        results.put((rank, True, pickle.dumps(fn(*args, **kwargs))))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
    finally:
        destroy_parallel()


def run_distributed(fn, world_size, args=(), kwargs=None, timeout=300.0):
    if not 1 <= world_size <= 8:
        raise ValueError(f"world_size must be between 1 and 8, got {world_size}")
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // world_size)
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(fn, rank, world_size, port, results, tuple(args), dict(kwargs or {}), threads),
            daemon=False,  # ranks may start processes of their own (checkpoint writers, data workers)
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    values, failures = {}, {}
    deadline = time.monotonic() + timeout
    try:
        while len(values) + len(failures) < world_size and not failures:
            try:
                rank, ok, payload = results.get(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            except queue_lib.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in values]
                if dead:
                    failures.update({r: f"process exited with code {procs[r].exitcode}" for r in dead})
                elif time.monotonic() >= deadline:
                    running = [r for r in range(world_size) if r not in values]
                    raise DistributedTestError(
                        f"{fn.__qualname__}: ranks {running} of {world_size} did not finish within {timeout:.0f} s"
                    )
                continue
            (values if ok else failures)[rank] = payload
    finally:
        # ranks that finished exit by themselves (shutting down what they started); the rest,
        # and anything a rank leaves behind, are killed with the rank's process group
        grace = time.monotonic() + (60 if len(values) == world_size else 0)
        for p in procs:
            p.join(timeout=max(0.0, grace - time.monotonic()))
            # the rank itself first: one still starting has no process group of its own yet
            p.kill()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.join(timeout=10)
    if failures:
        rank = min(failures)
        raise DistributedTestError(f"{fn.__qualname__} failed on rank {rank} of {world_size}:\n{failures[rank]}")
    return [pickle.loads(values[r]) for r in range(world_size)]


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| over the finite entries of ``expected``, in float64;
    non-finite entries must match exactly."""
    actual, expected = actual.detach().double(), expected.detach().double()
    finite = torch.isfinite(expected)
    assert torch.equal(actual[~finite], expected[~finite]), "non-finite entries differ"
    return ((actual[finite] - expected[finite]).abs().max() / expected[finite].abs().max()).item()


def norm_relative_error(actual, expected) -> float:
    """||actual - expected||_2 / ||expected||_2, in float64."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).norm() / expected.norm()).item()
