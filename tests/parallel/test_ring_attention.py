"""Ring attention on gloo equals attention over the whole sequence in float64: forward, the
gradients of q, k and v, and the JVP, with padding that cuts a chunk and one that empties a chunk,
through PyTorch's fused flash kernels and through the plain-math path; on two GPUs in bf16, through
cuDNN and flash per chunk, against float32."""

import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.parallel.ring_attention import ring_attention, ring_attention_jvp
from megatron_rcm.testing import run_distributed

from megatron_rcm.testing import norm_relative_error

BATCH, HEADS, DIM, SCALE = 2, 3, 16, 0.3


def _inputs(seq, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, HEADS, seq, DIM, generator=g, dtype=torch.float64) for _ in range(7)]


def _serial(q, k, v, q_t, k_t, v_t, w, valid):
    q, k, v = (t[:, :, :valid].clone().requires_grad_() for t in (q, k, v))

    def attend(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) * SCALE, dim=-1) @ v

    out = attend(q, k, v)
    (out * w[:, :, :valid]).sum().backward()
    _, out_t = torch.func.jvp(attend, (q.detach(), k.detach(), v.detach()),
                              tuple(t[:, :, :valid] for t in (q_t, k_t, v_t)))
    return out.detach(), q.grad, k.grad, v.grad, out_t


def _max_abs(t):
    return t.abs().max().item() if t.numel() else 0.0


def _body(cp, seq, valid, kernel, seed):
    with parallel_context(ParallelConfig(context_parallel_size=cp)):
        return _check(seq, valid, kernel, seed, parallel_state.get_context_parallel_group())


def _check(seq, valid, kernel, seed, group):
    cp, rank = dist.get_world_size(group), dist.get_rank(group)
    chunk = seq // cp
    full = _inputs(seq, seed)
    full[6][:, :, valid:] = 0  # the model drops padded queries' outputs: no gradient flows from them
    expected = _serial(*full, valid)
    mine = [t[:, :, rank * chunk:(rank + 1) * chunk] for t in full]
    q, k, v = (t.clone().requires_grad_() for t in mine[:3])
    out = ring_attention(q, k, v, SCALE, valid, group, kernel=kernel)
    (out * mine[6]).sum().backward()
    out_p, out_t = ring_attention_jvp(*mine[:6], SCALE, valid, group)
    n = max(0, min(chunk, valid - rank * chunk))  # this rank's real queries and keys
    here, there = slice(0, n), slice(rank * chunk, rank * chunk + n)  # in the chunk, in the whole sequence
    pairs = dict(out=(out, expected[0]), dq=(q.grad, expected[1]), dk=(k.grad, expected[2]),
                 dv=(v.grad, expected[3]), jvp_primal=(out_p, expected[0]), jvp=(out_t, expected[4]))
    errors = {name: _max_abs(got[:, :, here] - want[:, :, there]) for name, (got, want) in pairs.items()}
    errors["padded_keys"] = max(_max_abs(k.grad[:, :, n:]), _max_abs(v.grad[:, :, n:]))  # no gradient
    return errors


@pytest.mark.parametrize("cp, seq, valid", [(2, 12, 12), (2, 12, 9), (3, 12, 7)],
                         ids=["cp2-even", "cp2-cut-chunk", "cp3-empty-chunk"])
@pytest.mark.parametrize("kernel", ["flash", "math"])
def test_ring_attention_equals_whole_sequence(cp, seq, valid, kernel):
    for errors in run_distributed(_body, world_size=cp, args=(cp, seq, valid, kernel, 5)):
        assert all(e < 1e-12 for e in errors.values()), errors


def _gpu_body(seq, valid, kernel):
    with parallel_context(ParallelConfig(context_parallel_size=2)):
        group = parallel_state.get_context_parallel_group()
        rank, device = dist.get_rank(group), torch.device("cuda", torch.cuda.current_device())
        g = torch.Generator().manual_seed(9)
        q, k, v, w = (torch.randn(1, 4, seq, 128, generator=g).to(device) for _ in range(4))
        w[:, :, valid:] = 0
        ref = [t[:, :, :valid].clone().requires_grad_() for t in (q, k, v)]
        out_ref = torch.softmax(ref[0] @ ref[1].transpose(-1, -2) * 128**-0.5, dim=-1) @ ref[2]
        (out_ref * w[:, :, :valid]).sum().backward()
        chunk = seq // 2
        mine = [t[:, :, rank * chunk:(rank + 1) * chunk].bfloat16().clone().requires_grad_() for t in (q, k, v)]
        out = ring_attention(*mine, 128**-0.5, valid, group, kernel=kernel)
        (out.float() * w[:, :, rank * chunk:(rank + 1) * chunk]).sum().backward()
        rows = min(chunk, valid - rank * chunk)
        local = slice(rank * chunk, rank * chunk + rows)
        return {name: norm_relative_error(got[:, :, :rows], want[:, :, local]) for name, got, want in
                [("out", out, out_ref), ("dq", mine[0].grad, ref[0].grad), ("dk", mine[1].grad, ref[1].grad),
                 ("dv", mine[2].grad, ref[2].grad)]}


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("kernel", ["cudnn", "flash"])
def test_ring_attention_bf16_on_two_gpus_matches_float32(kernel):
    """The CUDA paths (bf16, NCCL): within bf16 rounding of a float32 whole-sequence run. The
    second chunk has 924 real keys, a length no kernel block divides."""
    if kernel == "cudnn" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the ring uses cuDNN per chunk from Hopper on")
    for errors in run_distributed(_gpu_body, world_size=2, args=(2048, 2048 - 100, kernel)):
        assert all(e < 1e-2 for e in errors.values()), errors
