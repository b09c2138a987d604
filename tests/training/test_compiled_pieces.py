"""The first training iteration compiles each elementwise form once for the calls a training step
makes of it: the frozen teacher's (no grad, plain tensors), the trainable networks' without grad
(Parameters that require grad) and the autograd-recorded ones give one compiled plain form, not a
recompile per requires_grad flag (TORCH_LOGS=recompiles showed 16 of them in a tiny run)."""

import torch
from torch._dynamo.utils import counters

from megatron_rcm.models import elementwise


def compiled_bias_gelu(monkeypatch):
    """The bias-GELU piece, compiling on CPU too, with torch.compile's caches and counters cleared."""
    monkeypatch.setattr(elementwise.Elementwise, "compile_on", ("cuda", "cpu"))
    torch._dynamo.reset()
    counters.clear()
    return elementwise.Elementwise(elementwise._bias_gelu, elementwise._bias_gelu_with_tangent,
                                   elementwise._bias_gelu_backward)


def test_frozen_trainable_and_recorded_calls_share_one_compiled_graph(monkeypatch):
    piece = compiled_bias_gelu(monkeypatch)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(8, 1, 16, generator=g, dtype=torch.float64)
    trainable = torch.nn.Parameter(torch.randn(16, generator=g, dtype=torch.float64))
    frozen = trainable.detach().clone()
    expected = elementwise._bias_gelu(y, frozen)
    with torch.no_grad():
        outputs = [piece(y, frozen, tangent=False, compiled=True), piece(y, trainable, tangent=False, compiled=True)]
    recorded = piece(y.clone().requires_grad_(), trainable, tangent=False, compiled=True)
    outputs.append(recorded.detach())
    for out in outputs:
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert counters["stats"]["unique_graphs"] == 1
    recorded.sum().backward()  # the backward form: one graph more
    assert counters["stats"]["unique_graphs"] == 2
    assert trainable.grad is not None and torch.isfinite(trainable.grad).all()


def test_a_thread_with_another_thread_count_reuses_the_compiled_graph(monkeypatch):
    """Autograd's device threads (backward, recompute) can start at another CPU thread count than the
    main thread's (a DataLoader's pin-memory thread sets the default to 1); dynamo guards graphs on
    it. Such a thread runs the form compiled on the main thread, at the main thread's count."""
    import threading

    piece = compiled_bias_gelu(monkeypatch)
    monkeypatch.setattr(elementwise, "_THREADS", [])
    g = torch.Generator().manual_seed(1)
    y, bias = torch.randn(4, 1, 8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    main_threads = torch.get_num_threads()
    piece(y, bias, tangent=False, compiled=True)
    results = {}

    def other_thread():
        torch.set_num_threads(main_threads + 1)
        results["out"] = piece(y, bias, tangent=False, compiled=True)
        results["threads"] = torch.get_num_threads()

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    torch.testing.assert_close(results["out"], elementwise._bias_gelu(y, bias), rtol=1e-12, atol=1e-12)
    assert counters["stats"]["unique_graphs"] == 1
    assert results["threads"] == main_threads == torch.get_num_threads()


def test_compile_workers_start_only_where_pieces_compile():
    """In a fresh process: nothing starts for a device the pieces do not compile on; for one they do,
    inductor's worker pool starts and becomes ready (so that the first compiles use it)."""
    import os
    import subprocess
    import sys

    script = """
import torch
from torch._inductor.async_compile import AsyncCompile
from megatron_rcm.models import elementwise
elementwise.start_compile_workers(torch.device("cpu"))
print("started on cpu without compiling there:", AsyncCompile._ready_future is not None)
elementwise.Elementwise.compile_on = ("cuda", "cpu")
elementwise.start_compile_workers(torch.device("cpu"))
print("started:", AsyncCompile._ready_future is not None)
AsyncCompile.wait_pool_ready(timeout=120)
print("ready:", AsyncCompile.use_process_pool())
"""
    env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS="2")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["started on cpu without compiling there: False", "started: True",
                                          "ready: True"]
