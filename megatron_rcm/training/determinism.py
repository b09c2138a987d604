"""``--deterministic-mode`` (Megatron-LM's flag): reruns and resumes that are bit-identical on GPUs.

On GPUs a run repeats only to rounding by default: attention backward kernels accumulate with
atomics, cuBLAS may pick other reduction splits, NCCL other algorithms. This mode asks torch for
deterministic kernels, cuBLAS for a fixed workspace and NCCL for one algorithm; with it a float32
run at TP=2 x DP=2 on 4 x H200 repeated itself bit for bit. Our kernels read the same switch
(``torch.are_deterministic_algorithms_enabled``): the attention JVP takes fixed launch configs
instead of timed autotuning, and FlashAttention-4 (atomic adds in its backward) stays off.
TorchInductor's own deterministic switch goes on too: torch's flag alone makes it keep one launch
config per compiled reduction, but leaves on a second config with half the reduction block for
reductions whose grid outruns the GPU's occupancy, picked between the two by timing. That pick sums
in another order and is made per process (or per node's cache), so a resumed run, or another node,
could round differently; it only arises at real sizes (the tiny tests' grids never outrun a GPU).
The environment variables must be set before cuBLAS and NCCL start, so call this before the
process group is made. As in Megatron-LM, an op with no deterministic kernel then raises an
error that names it (torch's ``warn_only`` would keep, for one, memory-efficient attention's
nondeterministic backward). CPU runs are deterministic already; there it only sets the flags.
"""

import os

import torch
import torch._inductor.config

DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "NCCL_ALGO": "Ring"}


def enable_deterministic_mode():
    for name, value in DETERMINISTIC_ENV.items():
        os.environ.setdefault(name, value)
    torch.use_deterministic_algorithms(True)
    torch._inductor.config.deterministic = True
