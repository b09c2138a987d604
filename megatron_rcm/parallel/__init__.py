"""Process groups, device and back-end selection, per-rank seeding, CPU support for megatron-core."""

from .config import ParallelConfig, ParallelSizeError
from .cpu_shim import cpu_shim_active, disable_cpu_shim, enable_cpu_shim
from .runtime import current_device, destroy_parallel, initialize_parallel, launch_env, parallel_context
from .seed import set_random_seed

__all__ = [
    "ParallelConfig",
    "ParallelSizeError",
    "cpu_shim_active",
    "current_device",
    "destroy_parallel",
    "disable_cpu_shim",
    "enable_cpu_shim",
    "initialize_parallel",
    "launch_env",
    "parallel_context",
    "set_random_seed",
]
