"""CPU shim, per-rank seeding, launcher environment parsing and the multi-rank test helper."""

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import get_cuda_rng_tracker
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

from megatron_rcm.parallel import ParallelConfig, cpu_shim_active, launch_env, parallel_context
from megatron_rcm.testing import DistributedTestError, run_distributed


def _seeding(tp):
    with parallel_context(ParallelConfig(tensor_model_parallel_size=tp), seed=77):
        assert cpu_shim_active() and torch.cuda.current_device() == torch.device("cpu")
        outer = torch.get_rng_state()
        with get_cuda_rng_tracker().fork():
            model_parallel = torch.rand(4)
        with get_cuda_rng_tracker().fork("data-parallel-rng"):
            data_parallel = torch.rand(4)
        # forking leaves the default generator where it was, and advances the forked one
        assert torch.equal(outer, torch.get_rng_state())
        with get_cuda_rng_tracker().fork():
            assert not torch.equal(torch.rand(4), model_parallel)
        default = torch.rand(4)
        # a sequence-parallel gather allocates on torch.cuda.current_device(): the shim's CPU device
        gathered = gather_from_sequence_parallel_region(torch.full((1, 2), float(dist.get_rank() + 1)))
        return model_parallel, data_parallel, default, gathered


def test_rng_tracker_and_cuda_allocations_on_cpu():
    (mp0, dp0, d0, g0), (mp1, dp1, d1, g1) = run_distributed(_seeding, world_size=2, args=(2,))
    assert not torch.equal(mp0, mp1), "model-parallel RNG must differ across TP ranks"
    assert torch.equal(dp0, dp1) and torch.equal(d0, d1), "data-parallel RNG is shared inside a TP group"
    assert torch.equal(g0, torch.tensor([[1.0, 1.0], [2.0, 2.0]])) and torch.equal(g0, g1)
    assert not cpu_shim_active(), "the shim is only active inside the parallel context"


def _data_parallel_seeds():
    with parallel_context(ParallelConfig(), seed=5):
        return torch.rand(3)


def test_data_parallel_ranks_share_the_seed():
    a, b = run_distributed(_data_parallel_seeds, world_size=2)
    assert torch.equal(a, b)


def _seeds(tp, cp, data_parallel_random_init):
    """This rank's RNG draws after seeding with 77, and what Megatron-LM's convention says they are."""
    import random

    import numpy as np

    with parallel_context(ParallelConfig(tensor_model_parallel_size=tp, context_parallel_size=cp), seed=77,
                          data_parallel_random_init=data_parallel_random_init):
        tp_rank, dp_rank = parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_data_parallel_rank()
        states = get_cuda_rng_tracker().get_states()
        got = dict(python=random.random(), numpy=np.random.rand(), torch=torch.rand(3),
                   model_parallel=states["model-parallel-rng"], data_parallel=states["data-parallel-rng"])
    # the default seed gains 10 per data-parallel rank only with data_parallel_random_init; the
    # tracker's model-parallel state is seeded with seed + 2718 + the tensor-parallel rank
    seed = 77 + (10 * dp_rank if data_parallel_random_init else 0)
    state_of = lambda s: torch.Generator().manual_seed(s).get_state()
    want = dict(python=random.Random(seed).random(), numpy=np.random.RandomState(seed).rand(),
                torch=torch.rand(3, generator=torch.Generator().manual_seed(seed)),
                model_parallel=state_of(seed + 2718 + tp_rank), data_parallel=state_of(seed))
    return {k: bool(torch.equal(torch.as_tensor(got[k]), torch.as_tensor(want[k]))) for k in want}, got["torch"]


@pytest.mark.parametrize("tp, cp, dp_init", [(2, 1, False), (1, 2, False), (1, 1, True)],
                         ids=["tp2", "cp2", "dp2-random-init"])
def test_per_rank_seeds_follow_megatron(tp, cp, dp_init):
    """Every generator on each of 2 ranks is seeded as Megatron-LM's ``_set_random_seed`` does:
    context-parallel ranks (one sample's tokens) share every seed but the tensor-parallel one, and
    data-parallel ranks differ only with ``data_parallel_random_init``."""
    (checks0, draw0), (checks1, draw1) = run_distributed(_seeds, world_size=2, args=(tp, cp, dp_init))
    assert all(checks0.values()) and all(checks1.values()), (checks0, checks1)
    assert torch.equal(draw0, draw1) != dp_init


def test_parallel_context_tears_down_after_an_error():
    """An exception inside the block leaves no process group, megatron group or CPU shim behind,
    so that the next ``parallel_context`` in the process starts afresh."""
    from megatron_rcm.parallel import destroy_parallel

    try:
        with pytest.raises(RuntimeError, match="inside the block"):
            with parallel_context(ParallelConfig()):
                raise RuntimeError("inside the block")
        assert not dist.is_initialized() and not parallel_state.model_parallel_is_initialized()
        assert not cpu_shim_active()
    finally:
        destroy_parallel()


def test_launch_env_torchrun_and_slurm():
    env = launch_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == (3, 8, 1, "n1", 1234)
    env = launch_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5",
                      "SLURM_JOB_NODELIST": "gpu[003-005,010],cpu1", "SLURM_JOB_ID": "123456"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr) == (5, 16, 5, "gpu003")
    assert env.master_port == 20000 + 123456 % 20000
    assert (launch_env({}).world_size, launch_env({}).master_port) == (1, 0)  # an in-process store
    with pytest.raises(ValueError, match="MASTER_PORT is not set"):
        launch_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="outside the world size"):
        launch_env({"RANK": "2", "WORLD_SIZE": "2", "MASTER_PORT": "1"})


def _single_process_store():
    with parallel_context(ParallelConfig()):
        return type(dist.distributed_c10d._get_default_store().underlying_store).__name__


def test_a_single_process_without_master_port_needs_no_tcp_port():
    """Several single-process runs started together (tools/digits_study.py's) once raced for the
    free port each had found; the store now lives in the process."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR")
           and not k.startswith("SLURM_")}
    code = "from tests.parallel.test_runtime import _single_process_store as f; print(f())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "HashStore"


def _fails_on_rank_one():
    if int(__import__("os").environ["RANK"]) == 1:
        raise RuntimeError("deliberate failure on rank one")
    with parallel_context(ParallelConfig()):
        dist.barrier()  # would hang: rank 1 never joins


def _hangs():
    import time

    time.sleep(60)


def test_helper_reports_the_failing_rank_without_hanging():
    with pytest.raises(DistributedTestError, match=r"(?s)failed on rank 1 of 2.*deliberate failure on rank one"):
        run_distributed(_fails_on_rank_one, world_size=2, timeout=60)


_STARTED_LATE = False


def _start_late_once(marker):
    # runs while a rank process unpickles its arguments, before _rank_main: the first rank to get
    # here starts 3 s late
    global _STARTED_LATE
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return None
    _STARTED_LATE = True
    time.sleep(3)
    return None


class _OneRankStartsLate:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return _start_late_once, (self.marker,)


def _fails_unless_started_late(_):
    if not _STARTED_LATE:
        raise RuntimeError("deliberate failure on the rank that started in time")
    time.sleep(60)


def test_helper_stops_a_rank_that_is_still_starting_when_another_fails(tmp_path):
    # the late rank makes its own process group only once it starts: killing that group alone
    # left it running (in CI, rank 0 of the test above then waited for rank 1 and pytest never exited).
    # Children of earlier tests (megatron-core's checkpoint writer keeps a multiprocessing manager) stay.
    earlier = set(mp.active_children())
    with pytest.raises(DistributedTestError, match="deliberate failure on the rank that started in time"):
        run_distributed(_fails_unless_started_late, world_size=2, args=(_OneRankStartsLate(tmp_path / "late"),),
                        timeout=60)
    assert not set(mp.active_children()) - earlier


def test_helper_times_out():
    with pytest.raises(DistributedTestError, match=r"ranks \[0, 1\] of 2 did not finish within 3 s"):
        run_distributed(_hangs, world_size=2, timeout=3)


def _recompute_replays_random_numbers():
    from megatron.core import tensor_parallel

    with parallel_context(ParallelConfig(), seed=11):
        x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)

        def noisy(a):  # dropout draws from the generator: recomputation must replay the same mask
            return torch.nn.functional.dropout(a.sin(), 0.5, training=True) * a

        state = torch.get_rng_state()
        y_ref = noisy(x)
        y_ref.sum().backward()
        g_ref, x.grad = x.grad, None
        torch.set_rng_state(state)
        y = tensor_parallel.checkpoint(noisy, False, x)  # reentrant: needs .backward(), not autograd.grad
        y.sum().backward()
        return torch.equal(y, y_ref), torch.equal(x.grad, g_ref), bool((y_ref == 0).any())


def test_megatron_recomputation_runs_on_cpu():
    same_output, same_grad, dropped_some = run_distributed(_recompute_replays_random_numbers, world_size=1)[0]
    assert dropped_some and same_output and same_grad
