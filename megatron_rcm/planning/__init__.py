"""Which parallel layout fits a cluster, and how fast it runs: memory and time models of rCM training.

Sits above ``models`` (it reads the weight map) and below ``training``, which it never imports.
"""

from .memory import Precision, activation_bytes, ddp_buffer_numel, ema_shard_numel, local_parameter_numels, \
    peak_memory, state_bytes
from .planner import Constraints, candidate_layouts, fewest_recomputed_blocks, plan, predict, smallest_cluster, \
    usable_gib
from .profile import DEFAULT_PROFILE, Profile, load_profile, save_profile
from .timing import iteration_seconds, wan_forward_flops
from .workload import Cluster, Layout, PlanError, Workload, check_layout

__all__ = [
    "DEFAULT_PROFILE",
    "Cluster",
    "Constraints",
    "Layout",
    "PlanError",
    "Precision",
    "Profile",
    "Workload",
    "activation_bytes",
    "candidate_layouts",
    "check_layout",
    "ddp_buffer_numel",
    "ema_shard_numel",
    "fewest_recomputed_blocks",
    "iteration_seconds",
    "load_profile",
    "local_parameter_numels",
    "peak_memory",
    "plan",
    "predict",
    "save_profile",
    "smallest_cluster",
    "state_bytes",
    "usable_gib",
    "wan_forward_flops",
]
