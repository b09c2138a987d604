"""On a GPU: the FFN's first linear with its bias and GELU-tanh in the GEMM epilogue
(``elementwise.linear_bias_gelu``) against float64, and which calls of a model take it: only those
that nothing differentiates (not the JVP, not a forward autograd records, not the first pass of
megatron's reentrant recompute)."""

import pytest
import torch
import torch.nn.functional as nn_functional
from torch.utils._python_dispatch import TorchDispatchMode

from megatron_rcm.models import elementwise
from megatron_rcm.models.tangent import linear_parts
from megatron_rcm.models.wan import WanModel, wan_config
from megatron_rcm.parallel import parallel_context
from megatron_rcm.testing import norm_relative_error

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]

EPILOGUE = "aten._addmm_activation.default"
LAYERS = 2


class OpNames(TorchDispatchMode):
    """The names of the ops that reach the dispatcher."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _layer_and_input(dtype, seed, tokens=300, width=96, ffn=352):
    g = torch.Generator(device="cuda").manual_seed(seed)
    layer = torch.nn.Linear(width, ffn, device="cuda", dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(ffn, width, generator=g, device="cuda") / width**0.5)
        layer.bias.copy_(torch.randn(ffn, generator=g, device="cuda"))
    x = torch.randn(tokens, 2, width, generator=g, device="cuda").to(dtype)
    return layer, x


def _float64_gelu(layer, x, approximate):
    pre = x.double() @ layer.weight.double().T + layer.bias.double()
    return nn_functional.gelu(pre, approximate=approximate)


def test_the_epilogue_is_gelu_tanh_of_the_float32_accumulator():
    assert not torch.backends.cuda.matmul.allow_tf32  # a float32 GEMM, so that the GELU form shows
    layer, x = _layer_and_input(torch.float32, 1)
    with torch.no_grad(), OpNames() as ops:
        out = elementwise.linear_bias_gelu(layer, x, tangent=False, compiled=True)
    assert EPILOGUE in ops.names
    assert out.shape == (*x.shape[:-1], layer.out_features)
    error = norm_relative_error(out, _float64_gelu(layer, x, "tanh"))
    assert error < 1e-5, error
    assert norm_relative_error(out, _float64_gelu(layer, x, "none")) > 10 * error  # tanh, not erf


def test_in_bf16_it_rounds_once_where_the_separate_pieces_round_twice():
    layer, x = _layer_and_input(torch.bfloat16, 2)
    with torch.no_grad():
        fused = elementwise.linear_bias_gelu(layer, x, tangent=False, compiled=True)
        apart = elementwise.bias_gelu(*linear_parts(layer, x), tangent=False, compiled=True)
    reference = _float64_gelu(layer, x, "tanh")
    fused_error, apart_error = norm_relative_error(fused, reference), norm_relative_error(apart, reference)
    assert fused_error < apart_error < 2**-7, (fused_error, apart_error)


def _epilogue_count(run):
    with OpNames() as ops:
        run()
    return ops.names.count(EPILOGUE)


def test_only_calls_that_nothing_differentiates_take_it():
    with parallel_context():
        torch.manual_seed(0)
        config = wan_config("tiny-a", num_layers=LAYERS, params_dtype=torch.bfloat16, use_cpu_initialization=True,
                            recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
        model = WanModel(config).cuda()
        g = torch.Generator(device="cuda").manual_seed(3)
        x = torch.randn(1, config.in_channels, 3, 16, 16, generator=g, device="cuda", dtype=torch.bfloat16)
        t = torch.rand(1, generator=g, device="cuda") * 1000
        text = torch.randn(1, 8, config.text_dim, generator=g, device="cuda", dtype=torch.bfloat16)

        def no_grad():
            with torch.no_grad():
                model(x, t, text)

        def recomputed_with_grad():
            model(x, t, text).float().square().mean().backward()

        def jvp():
            model.jvp(x, t, text, torch.randn_like(x), torch.ones_like(t))

        counts = {f.__name__: _epilogue_count(f) for f in (no_grad, recomputed_with_grad, jvp)}
    assert counts == {"no_grad": LAYERS, "recomputed_with_grad": 0, "jvp": 0}
