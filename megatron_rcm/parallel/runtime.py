"""Start and stop torch.distributed and megatron-core's process groups.

One entry point for training scripts, sampling scripts and tests: ``initialize_parallel``
reads the launcher's environment (torchrun, or Slurm's srun without torchrun), picks NCCL when
CUDA is present and gloo otherwise (installing the CPU shim), builds megatron-core's
``parallel_state`` groups and seeds every RNG per rank.
"""

import contextlib
import datetime
import os
import re
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from .config import ParallelConfig
from .cpu_shim import disable_cpu_shim, enable_cpu_shim
from .seed import set_random_seed


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    """This process's rank among all of the job's processes."""
    world_size: int
    """The number of processes in the job."""
    local_rank: int
    """This process's rank on its node (it picks the GPU)."""
    master_addr: str
    """Where rank 0's rendezvous store listens."""
    master_port: int
    """Its TCP port; 0 for a single process without MASTER_PORT, whose store lives in the process."""


def _first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm node list such as 'gpu[003-005,010],cpu1' -> 'gpu003'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if match is None:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}; set MASTER_ADDR instead")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(environ=None) -> LaunchEnv:
    """The process's place in the job, from torchrun's or Slurm's variables (single process otherwise)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local = int(env.get("SLURM_LOCALID", 0))
    else:
        rank, world, local = 0, 1, 0
    if "MASTER_ADDR" in env:
        addr = env["MASTER_ADDR"]
    elif "SLURM_JOB_NODELIST" in env:
        addr = _first_slurm_host(env["SLURM_JOB_NODELIST"])
    else:
        addr = "127.0.0.1"
    if "MASTER_PORT" in env:
        port = int(env["MASTER_PORT"])
    elif "SLURM_JOB_ID" in env:
        port = 20000 + int(env["SLURM_JOB_ID"]) % 20000
    elif world == 1:
        # no TCP store: a free port found here could be taken before the store binds it, as
        # happens when several single-process runs start together (EADDRINUSE)
        port = 0
    else:
        raise ValueError("MASTER_PORT is not set; launch with torchrun or srun, or export MASTER_PORT")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside the world size {world}")
    return LaunchEnv(rank, world, local, addr, port)


def current_device() -> torch.device:
    """The device this rank computes on: its CUDA device, or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def initialize_parallel(
    config: ParallelConfig = ParallelConfig(),
    seed: int = 1234,
    data_parallel_random_init: bool = False,
    timeout_minutes: int = 30,
) -> ParallelConfig:
    """Initialise torch.distributed and megatron-core's groups for ``config``.

    Sizes that do not divide the world size raise ``ParallelSizeError`` before any process
    group is created. Returns the config.
    """
    env = launch_env()
    config.data_parallel_size(env.world_size)
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        backend = "nccl"
    else:
        enable_cpu_shim()
        backend = "gloo"
    if not dist.is_initialized():
        rendezvous = ({"store": dist.HashStore()} if env.master_port == 0
                      else {"init_method": f"tcp://{env.master_addr}:{env.master_port}"})
        dist.init_process_group(
            backend=backend,
            **rendezvous,
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=config.tensor_model_parallel_size,
        pipeline_model_parallel_size=config.pipeline_model_parallel_size,
        context_parallel_size=config.context_parallel_size,
        distributed_timeout_minutes=timeout_minutes,
    )
    set_random_seed(seed, data_parallel_random_init)
    return config


def destroy_parallel() -> None:
    """Tear down megatron-core's groups, the default process group and the CPU shim."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    disable_cpu_shim()


@contextlib.contextmanager
def parallel_context(config: ParallelConfig = ParallelConfig(), seed: int = 1234, **kwargs):
    """``initialize_parallel`` for the duration of a ``with`` block, torn down even on error
    (except under NCCL, where a teardown would wait for peers still inside a collective: the
    failing rank exits and the launcher stops the others)."""
    try:
        yield initialize_parallel(config, seed=seed, **kwargs)
    except BaseException:
        if not (dist.is_initialized() and dist.get_backend() == "nccl"):
            destroy_parallel()
        raise
    destroy_parallel()
