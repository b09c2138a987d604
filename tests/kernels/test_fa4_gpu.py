"""FlashAttention-4 behind attention(): outputs and gradients against float64 and against cuDNN's error,
the routing, selective recompute keeping its outputs, torch.compile, and the profiler's classes (sm_90
GPUs with the flash-attn-4 package only; run with pytest -m gpu tests/kernels)."""
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from megatron_rcm.kernels import attention, fa4
from megatron_rcm.kernels.reference import attention_reference
from megatron_rcm.models.dit import _checkpoint_keeping_attention

from megatron_rcm.testing import relative_error
from .helpers import random_inputs, sbhd_views

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9 or not fa4.available(),
    reason="needs an sm_90 GPU and the flash-attn-4 package")]


def _forward_and_grads(fn, q, k, v, d_out):
    primals = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*primals)
    out.backward(d_out)
    return [out.detach()] + [t.grad for t in primals]


def _cudnn(q, k, v):
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 1e-2), (torch.float16, 1.5e-3)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("batch,heads,seqlen_q,seqlen_k", [(2, 3, 1500, 1024), (1, 4, 777, 4097), (2, 2, 3001, 3001)])
def test_outputs_and_gradients_are_as_close_to_float64_as_cudnns(dtype, tolerance, head_dim, batch, heads, seqlen_q,
                                                                 seqlen_k):
    """Strided [S, B, H, D] views as the models pass them; key lengths with a partial last block. Each
    within ``tolerance`` of float64 and within 1.5x of cuDNN's error (the same roundings in another
    order; the GPU tests of our JVP kernels hold it to the same), and the output in q's memory order."""
    q, k, v, d_out, _, _ = sbhd_views(random_inputs(batch, heads, seqlen_q, seqlen_k, head_dim, dtype, device="cuda"))
    assert fa4.serves(q, k, None)
    want = _forward_and_grads(lambda *t: attention_reference(*t)[0], *(t.double() for t in (q, k, v)), d_out.double())
    got = _forward_and_grads(attention, q, k, v, d_out)
    cudnn = _forward_and_grads(_cudnn, q, k, v, d_out)
    for name, g, c, w in zip(("out", "dq", "dk", "dv"), got, cudnn, want):
        error, cudnn_error = relative_error(g, w), relative_error(c, w)
        assert error <= tolerance and error <= 1.5 * cudnn_error + 1e-5, (name, error, cudnn_error)
        assert g.shape == w.shape and g.dtype == dtype
    assert attention(q, k, v).permute(2, 0, 1, 3).is_contiguous()  # [S, B, H, D], as q


def test_routing():
    q, k, v, _, _, _ = random_inputs(1, 2, 300, 2048, 128, torch.bfloat16, device="cuda")
    short_k, short_v = k[:, :, :512], v[:, :, :512]
    mask = torch.ones(1, 2048, dtype=torch.bool, device="cuda")
    assert fa4.serves(q, k, None)
    assert not fa4.serves(q, short_k, None)  # text keys stay on cuDNN
    assert not fa4.serves(q, k, mask)
    assert not fa4.serves(q.float(), k.float(), None)
    assert not fa4.serves(q[..., :96], k[..., :96], None)
    with _CountOps() as ops:
        attention(q, k, v)
        attention(q, short_k, short_v)
    assert ops.count(torch.ops.megatron_rcm.fa4_forward.default) == 1


def test_turned_off_by_the_environment(monkeypatch):
    q, k, _, _, _, _ = random_inputs(1, 2, 300, 2048, 128, torch.bfloat16, device="cuda")
    monkeypatch.setenv(fa4.ENV, "0")
    assert not fa4.serves(q, k, None)


def test_deterministic_mode_stays_on_sdpa():
    q, k, _, _, _, _ = random_inputs(1, 2, 300, 2048, 128, torch.bfloat16, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        assert not fa4.serves(q, k, None)
    finally:
        torch.use_deterministic_algorithms(False)
    assert fa4.serves(q, k, None)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))

    def count(self, op):
        return self.ops.count(op)


def test_selective_recompute_keeps_its_outputs():
    """The recomputed block runs the forward kernel once, not again in the backward, and its gradients
    equal those of the block run without recompute."""
    q, k, v, d_out, _, _ = random_inputs(1, 2, 1024, 1024, 128, torch.bfloat16, device="cuda", seed=4)
    weight = torch.randn(128, 128, device="cuda", dtype=torch.bfloat16) / 12

    def block(q, k, v):
        return attention(q @ weight, k, v) @ weight

    plain = _forward_and_grads(block, q, k, v, d_out)
    with _CountOps() as ops:
        kept = _forward_and_grads(lambda *t: _checkpoint_keeping_attention(block, *t), q, k, v, d_out)
    assert ops.count(torch.ops.megatron_rcm.fa4_forward.default) == 1
    assert ops.count(torch.ops.megatron_rcm.fa4_backward.default) == 1
    assert torch.equal(plain[0], kept[0])
    for p, c in zip(plain[1:], kept[1:]):  # the backward accumulates dq in an order that varies
        assert relative_error(c, p) < 5e-3


def test_torch_compile_traces_through_it():
    q, k, v, _, _, _ = random_inputs(2, 2, 700, 1100, 64, torch.bfloat16, device="cuda", seed=5)
    compiled = torch.compile(lambda q, k, v: attention(q, k, v).float().square().sum(), fullgraph=True)
    assert torch.equal(compiled(q, k, v), attention(q, k, v).float().square().sum())


def test_the_profiler_counts_its_kernels_as_attention():
    sys.path.insert(0, str(Path(__file__).parents[2] / "tools"))
    import profile_train
    q, k, v, d_out, _, _ = random_inputs(1, 2, 1024, 1024, 128, torch.bfloat16, device="cuda", seed=6)
    _forward_and_grads(attention, q, k, v, d_out)  # compiled outside the profile
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        _forward_and_grads(attention, q, k, v, d_out)
        torch.cuda.synchronize()
    names = {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}
    fa4_kernels = [n for n in names if "flash" in n.lower() or "cutlass" in n.lower()]
    assert fa4_kernels, names
    assert {profile_train.kernel_class(n) for n in fa4_kernels} == {"attention"}, fa4_kernels


def test_after_the_warm_up_the_models_calls_compile_nothing(tmp_path, monkeypatch):
    interface = fa4._interface()
    caches = [f.compile_cache for f in (interface._flash_attn_fwd, interface._bwd_preprocess,
                                        interface._bwd_postprocess_convert, interface._flash_attn_bwd)]
    for cache in caches:  # empty, in memory and on disk: only the warm-up's child fills the disk
        monkeypatch.setattr(cache, "cache", {})
        monkeypatch.setattr(cache, "cache_path", tmp_path / cache.cache_path.parent.name / cache.cache_path.name)
    monkeypatch.setenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", str(tmp_path))
    assert fa4.warm_up(torch.bfloat16, 128, torch.device("cuda")).wait() == 0
    compiled = []
    compile_ = interface.cute.compile
    monkeypatch.setattr(interface.cute, "compile", lambda *a, **kw: compiled.append(a[0]) or compile_(*a, **kw))
    # the Wan-1.3B head count, a batch of two (the guided teacher), the model's [S, B, H, D] storage
    q, k, v, d_out, _, _ = sbhd_views(random_inputs(2, 12, 3000, 3000, 128, torch.bfloat16, device="cuda", seed=7))
    _forward_and_grads(attention, q, k, v, d_out)
    assert not compiled
    assert all(cache.cache for cache in caches)  # what it ran, loaded from the child's entries
    # and the stamp it left says so to the next run, which starts no child
    assert fa4.warm_up(torch.bfloat16, 128, torch.device("cuda")) is None
