"""Per-rank seeding, as Megatron-LM's ``_set_random_seed`` does it."""

import random

import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel


def set_random_seed(seed: int, data_parallel_random_init: bool = False) -> int:
    """Seed Python, NumPy and torch on this rank and (re)build the model-parallel RNG tracker.

    Pipeline stages get different seeds (+100 per stage); data-parallel ranks get the same
    seed unless ``data_parallel_random_init``. The tracker holds the "model-parallel-rng"
    state (seed + 2718 + tensor-parallel rank, different across TP ranks, used for weight init
    and dropout inside TP regions) and the "data-parallel-rng" state. On CPU the tracker is the
    CPU stand-in installed by the shim, so ``get_cuda_rng_tracker().fork()`` works the same.
    Returns the seed used on this rank.
    """
    if seed <= 0:
        raise ValueError(f"seed must be a positive integer, got {seed}")
    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    if data_parallel_random_init:
        seed += 10 * parallel_state.get_data_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return seed
