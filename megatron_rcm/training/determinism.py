"""``--deterministic-mode`` (Megatron-LM's flag): reruns and resumes that are bit-identical on GPUs.

On GPUs a run repeats only to rounding by default: attention backward kernels accumulate with
atomics, cuBLAS may pick other reduction splits, NCCL other algorithms. This mode asks torch for
deterministic kernels (which also puts TorchInductor in its deterministic mode: no timed choice
between kernel configs that round differently), cuBLAS for a fixed workspace and NCCL for one
algorithm; with it a float32 run at TP=2 x DP=2 on 4 x H200 repeated itself bit for bit. Our
kernels read the same switch (``torch.are_deterministic_algorithms_enabled``): the attention JVP
takes fixed launch configs instead of timed autotuning, and FlashAttention-4 (atomic adds in its
backward) stays off.
The environment variables must be set before cuBLAS and NCCL start, so call this before the
process group is made. As in Megatron-LM, an op with no deterministic kernel then raises an
error that names it (torch's ``warn_only`` would keep, for one, memory-efficient attention's
nondeterministic backward). CPU runs are deterministic already; there it only sets the flags.
"""

import os

import torch

DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "NCCL_ALGO": "Ring"}


def enable_deterministic_mode():
    for name, value in DETERMINISTIC_ENV.items():
        os.environ.setdefault(name, value)
    torch.use_deterministic_algorithms(True)
