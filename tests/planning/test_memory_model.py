"""The planner's state bytes equal the bytes the real pieces allocate and checkpoint: a tiny Wan
model, megatron DDP's gradient buffer (with and without the distributed optimizer's padding) and
the CPU optimizer's Adam state, per rank of 2 gloo ranks at several layouts."""

import pytest
import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from megatron_rcm.models.wan import WanModel
from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.planning import Layout, Precision, Workload, state_bytes
from megatron_rcm.testing import run_distributed

# tiny-b has 4 heads: all-to-all CP 2 needs the heads divisible by it
LAYOUTS = {"tp2-sp": (Layout(tp=2, sp=True), "tiny-a"), "cp2": (Layout(cp=2), "tiny-b"), "dp2": (Layout(dp=2), "tiny-a")}
FLOAT32 = Precision(param_bytes=4, distributed_optimizer=False)


def _local_bytes(sharded):
    """Bytes of this rank's tensors in a (nested) sharded state dict."""
    if isinstance(sharded, dict):
        return sum(_local_bytes(v) for v in sharded.values())
    if isinstance(sharded, (ShardedTensor, ShardedTensorFactory)):
        return sharded.data.numel() * sharded.data.element_size()
    return 0


def _measure(layout, preset):
    from megatron_rcm.training.config import OptimizationConfig
    from megatron_rcm.training.optimizer import CpuFP32Optimizer, ensure_adam_state, optimizer_config

    parallel = ParallelConfig(tensor_model_parallel_size=layout.tp, context_parallel_size=layout.cp,
                              sequence_parallel=layout.sp)
    with parallel_context(parallel):
        config = Workload(preset).config(tensor_model_parallel_size=layout.tp, context_parallel_size=layout.cp,
                                         sequence_parallel=layout.sp, params_dtype=torch.float32)
        model = WanModel(config)
        measured = {"parameters": _local_bytes(model.sharded_state_dict(prefix="model."))}
        for distributed in (False, True):
            ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=distributed)
            ddp = DistributedDataParallel(config, ddp_config, WanModel(config))
            measured[f"gradients_distributed_{distributed}"] = sum(
                b.grad_data.numel() * b.grad_data.element_size() for b in ddp.buffers)
        optimizer = CpuFP32Optimizer(ddp.module, optimizer_config(OptimizationConfig(), 1e-4, bf16=False))
        ensure_adam_state(optimizer)
        opt_sharded = optimizer.sharded_state_dict(ddp.module.sharded_state_dict(prefix="model."))
        measured["optimizer"] = _local_bytes(opt_sharded)
        return measured


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_state_bytes_equal_the_real_ranks(name):
    layout, preset = LAYOUTS[name]
    config = Workload(preset).config()
    expected = state_bytes(config, layout, FLOAT32)
    padded = state_bytes(config, layout, Precision(param_bytes=4))
    for measured in run_distributed(_measure, world_size=2, args=(layout, preset)):
        assert measured["parameters"] == expected["teacher"]["parameters"] == expected["student"]["parameters"]
        assert measured["gradients_distributed_False"] == expected["student"]["gradients"]
        # the distributed optimizer's padding is really exercised
        assert measured["gradients_distributed_True"] == padded["student"]["gradients"] > expected["student"][
            "gradients"]
        assert measured["optimizer"] == expected["student"]["optimizer"]
