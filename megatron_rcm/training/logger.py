"""Per-iteration metrics: reduced over data-parallel ranks, written by rank 0 as JSON lines and
TensorBoard scalars, with a progress line every ``--log-interval`` iterations."""

import json
import math
import sys
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from ..parallel import current_device


def reduce_diagnostics(diagnostics):
    """Loss terms and diagnostics (0-dim tensors, equal within a replica) averaged over the
    data-parallel ranks; counts of non-finite samples summed."""
    if not diagnostics:
        return {}
    names = sorted(diagnostics)
    device = current_device()  # NCCL reduces CUDA tensors only
    values = torch.stack([torch.as_tensor(diagnostics[n], device=device).detach().double() for n in names])
    dp_group = parallel_state.get_data_parallel_group()
    dist.all_reduce(values, group=dp_group)
    dp = dist.get_world_size(dp_group)
    return {n: v if "nonfinite" in n else v / dp for n, v in zip(names, values.tolist())}


def memory_metrics():
    out = {"memory/host_rss_gib": psutil.Process().memory_info().rss / 2**30}
    if torch.cuda.is_available():
        out["memory/allocated_gib"] = torch.cuda.memory_allocated() / 2**30
        out["memory/peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["memory/reserved_gib"] = torch.cuda.memory_reserved() / 2**30
        # the caching allocator's retries after a failed cudaMalloc (it frees its cache and syncs the
        # device first): each can cost hundreds of ms, the sign of fragmentation near the card's limit
        out["memory/alloc_retries"] = torch.cuda.memory_stats().get("num_alloc_retries", 0)
    return out


class MetricsLogger:
    def __init__(self, jsonl_path=None, tensorboard_dir=None, log_interval=1):
        self.rank0 = dist.get_rank() == 0
        self.log_interval = log_interval
        self.jsonl = None
        if jsonl_path and self.rank0:
            Path(jsonl_path).parent.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(jsonl_path, "a")
        self.tensorboard = None
        if tensorboard_dir and self.rank0:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(tensorboard_dir)

    def log(self, iteration, record, train_iters):
        """``record``: flat name -> number for this iteration (already global)."""
        if not self.rank0:
            return
        record = {"iteration": iteration, **record}
        if self.jsonl:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        if self.tensorboard:
            for name, value in record.items():
                if isinstance(value, (int, float)) and name != "iteration" and math.isfinite(value):
                    self.tensorboard.add_scalar(name, value, iteration)
        if iteration % self.log_interval == 0 or iteration == train_iters:
            print(self.progress_line(record, train_iters), file=sys.stderr, flush=True)

    @staticmethod
    def progress_line(record, train_iters):
        parts = [f"iter {record['iteration']}/{train_iters}", record["network"]]
        for name in ("loss/student", "loss/scm", "loss/dmd", "loss/fake_score"):
            if name in record:
                parts.append(f"{name.split('/')[1]} {record[name]:.4g}")
        parts.append(f"{record['seconds']:.2f} s/it")
        parts.append(f"{record['tokens_per_second']:.0f} tok/s")
        return " | ".join(parts)

    def close(self):
        if self.jsonl:
            self.jsonl.close()
        if self.tensorboard:
            self.tensorboard.close()
