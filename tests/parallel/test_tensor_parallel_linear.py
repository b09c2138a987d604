"""Column -> Row parallel linear with sequence parallelism on gloo equals the serial computation."""

import pytest
import torch
import torch.distributed as dist
from megatron.core import ModelParallelConfig, parallel_state
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.testing import run_distributed

SEQ, BATCH, HIDDEN, FFN = 6, 3, 8, 12


def _serial_problem():
    g = torch.Generator().manual_seed(20261127)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    return dict(x=randn(SEQ, BATCH, HIDDEN), w1=randn(FFN, HIDDEN), b1=randn(FFN),
                w2=randn(HIDDEN, FFN), b2=randn(HIDDEN), dy=randn(SEQ, BATCH, HIDDEN))


def _serial_reference(p):
    x, w1, b1, w2, b2 = (p[k].clone().requires_grad_() for k in ("x", "w1", "b1", "w2", "b2"))
    y = torch.nn.functional.gelu(x @ w1.T + b1, approximate="tanh") @ w2.T + b2
    y.backward(p["dy"])
    return y.detach(), {"x": x.grad, "w1": w1.grad, "b1": b1.grad, "w2": w2.grad, "b2": b2.grad}


def _column_row(tp, sequence_parallel):
    with parallel_context(ParallelConfig(tensor_model_parallel_size=tp, sequence_parallel=sequence_parallel)):
        rank = parallel_state.get_tensor_model_parallel_rank()
        cfg = ModelParallelConfig(
            tensor_model_parallel_size=tp,
            sequence_parallel=sequence_parallel,
            use_cpu_initialization=True,
            params_dtype=torch.float64,
        )
        init = torch.nn.init.normal_
        col = ColumnParallelLinear(HIDDEN, FFN, config=cfg, init_method=init, bias=True, gather_output=False)
        row = RowParallelLinear(FFN, HIDDEN, config=cfg, init_method=init, bias=True,
                                input_is_parallel=True, skip_bias_add=False)
        p = _serial_problem()
        ffn_shard = slice(rank * FFN // tp, (rank + 1) * FFN // tp)
        seq_shard = slice(rank * SEQ // tp, (rank + 1) * SEQ // tp) if sequence_parallel else slice(None)
        with torch.no_grad():
            col.weight.copy_(p["w1"][ffn_shard])
            col.bias.copy_(p["b1"][ffn_shard])
            row.weight.copy_(p["w2"][:, ffn_shard])
            row.bias.copy_(p["b2"])
        x = p["x"][seq_shard].clone().requires_grad_()
        h, _ = col(x)
        y, _ = row(torch.nn.functional.gelu(h, approximate="tanh"))
        y.backward(p["dy"][seq_shard])
        # The row bias sits in the sequence-parallel region: each rank holds the gradient of its
        # own tokens, and Megatron's finalize step sums them over the TP group.
        b2_grad = row.bias.grad.clone()
        if sequence_parallel:
            dist.all_reduce(b2_grad, group=parallel_state.get_tensor_model_parallel_group())

        y_ref, grads = _serial_reference(p)
        torch.testing.assert_close(y, y_ref[seq_shard], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x.grad, grads["x"][seq_shard], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(col.weight.grad, grads["w1"][ffn_shard], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(col.bias.grad, grads["b1"][ffn_shard], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(row.weight.grad, grads["w2"][:, ffn_shard], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b2_grad, grads["b2"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sequence_parallel", [True, False])
def test_column_row_parallel_equals_serial(sequence_parallel):
    run_distributed(_column_row, world_size=2, args=(2, sequence_parallel))


def test_serial_reference_is_not_trivial():
    p = _serial_problem()
    y, grads = _serial_reference(p)
    assert y.abs().min() > 0 and all(g.abs().sum() > 0 for g in grads.values())
