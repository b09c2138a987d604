"""Run megatron-core's tensor-parallel layers and mappings on CPU (gloo), for tests and CPU demos.

megatron-core assumes CUDA in three places that the CPU path reaches:
  * buffers for sequence-parallel gathers / reduce-scatters and the global memory buffer are
    allocated on ``torch.cuda.current_device()``;
  * ``dist_checkpointing`` calls ``torch.cuda.synchronize()``;
  * the model-parallel RNG tracker and activation recomputation (``tensor_parallel.checkpoint``)
    save and restore CUDA generator states.
The shim redirects the first to the CPU device, makes the second a no-op, replaces the tracker
by one that forks the CPU generator and points megatron's CUDA RNG-state getter and setter at
the CPU generator (recomputation then replays the same CPU random numbers). It is active only while CUDA is absent: on a
machine with a GPU ``enable_cpu_shim`` does nothing, so GPU runs use megatron-core unchanged.
"""

import contextlib

import torch
from megatron.core.tensor_parallel import random as mcore_random

_saved = {}


class CpuRNGStatesTracker(mcore_random.CudaRNGStatesTracker):
    """megatron-core's RNG tracker with the CPU default generator in place of the CUDA one."""

    def add(self, name, seed):
        if seed in self.seeds_:
            raise ValueError(f"seed {seed} already exists")
        if name in self.states_:
            raise ValueError(f"rng state {name} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        outer = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(outer)

    @contextlib.contextmanager
    def fork(self, name=mcore_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise ValueError(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def cpu_shim_active() -> bool:
    return bool(_saved)


def enable_cpu_shim() -> bool:
    """Install the shim if CUDA is absent; returns whether it is active. Idempotent."""
    if torch.cuda.is_available():
        return False
    if not _saved:
        _saved["current_device"] = torch.cuda.current_device
        _saved["synchronize"] = torch.cuda.synchronize
        _saved["tracker"] = mcore_random._CUDA_RNG_STATE_TRACKER
        _saved["tracker_initialized"] = mcore_random._CUDA_RNG_STATE_TRACKER_INITIALIZED
        _saved["get_rng_state"] = mcore_random._get_cuda_rng_state
        _saved["set_rng_state"] = mcore_random._set_cuda_rng_state
        torch.cuda.current_device = lambda: torch.device("cpu")
        mcore_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
        mcore_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
        torch.cuda.synchronize = lambda device=None: None
        mcore_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
        mcore_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    return True


def disable_cpu_shim() -> None:
    """Restore what ``enable_cpu_shim`` replaced."""
    if not _saved:
        return
    torch.cuda.current_device = _saved.pop("current_device")
    torch.cuda.synchronize = _saved.pop("synchronize")
    mcore_random._CUDA_RNG_STATE_TRACKER = _saved.pop("tracker")
    mcore_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = _saved.pop("tracker_initialized")
    mcore_random._get_cuda_rng_state = _saved.pop("get_rng_state")
    mcore_random._set_cuda_rng_state = _saved.pop("set_rng_state")
