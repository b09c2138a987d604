"""attention(): SDPA for plain calls, the Triton kernel under forward-mode AD."""
import importlib

import pytest
import torch
from torch.autograd import forward_ad

from megatron_rcm.kernels import attention
from megatron_rcm.kernels.reference import attention_reference

from megatron_rcm.testing import relative_error
from .helpers import random_inputs, reference_jvp


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts launches of the Triton kernel by attention()."""
    # The package's `attention` function shadows its submodule of that name.
    attention_module = importlib.import_module("megatron_rcm.kernels.attention")
    calls = []
    kernel = attention_module.flash_attention_jvp

    def counting(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(attention_module, "flash_attention_jvp", counting)
    return calls


def inputs_and_mask():
    inputs = random_inputs(2, 2, 37, 53, 16, torch.float64)
    mask = torch.rand(2, 53, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[1] = False
    return inputs, mask


def test_torch_func_jvp_runs_the_kernel(kernel_calls):
    inputs, mask = inputs_and_mask()
    out, out_t = torch.func.jvp(lambda q, k, v: attention(q, k, v, 0.2, mask), tuple(inputs[:3]), tuple(inputs[3:]))
    want, want_t, _, _ = reference_jvp(inputs, 0.2, mask)
    assert kernel_calls == [1]
    assert relative_error(out, want) < 1e-12
    assert relative_error(out_t, want_t) < 1e-12


def test_forward_ad_with_tangent_on_q_only(kernel_calls):
    inputs, mask = inputs_and_mask()
    q, k, v, q_t, _, _ = inputs
    with forward_ad.dual_level():
        out, out_t = forward_ad.unpack_dual(attention(forward_ad.make_dual(q, q_t), k, v, key_padding_mask=mask))
    want, want_t, _, _ = reference_jvp([q, k, v, q_t, torch.zeros_like(k), torch.zeros_like(v)],
                                       key_padding_mask=mask)
    assert kernel_calls == [1]
    assert relative_error(out, want) < 1e-12
    assert relative_error(out_t, want_t) < 1e-12


def test_plain_call_uses_sdpa_with_native_backward(kernel_calls):
    inputs, mask = inputs_and_mask()
    primals = [t.clone().requires_grad_() for t in inputs[:3]]
    out = attention(*primals, key_padding_mask=mask)
    out.backward(inputs[3])
    assert kernel_calls == []
    assert "Attention" in type(out.grad_fn).__name__

    ref_primals = [t.clone().requires_grad_() for t in inputs[:3]]
    want, _ = attention_reference(*ref_primals, key_padding_mask=mask)
    want.backward(inputs[3])
    assert relative_error(out.detach(), want.detach()) < 1e-12
    for got, ref in zip(primals, ref_primals):
        assert relative_error(got.grad, ref.grad) < 1e-12
