"""The Wan elementwise pieces: hand-derived tangents against torch.func.jvp of the plain forms
(float64), and on a GPU the compiled kernels against the eager formulas."""

import pytest
import torch

from megatron_rcm.models.tangent import stack
from megatron_rcm.models.wan import elementwise as ew

S, B, HEADS, HEAD_DIM = 6, 2, 3, 8
C = HEADS * HEAD_DIM


def _cases(dtype, device, seed, in_float64=False):
    """name -> (call(tangent, compiled, *stacked), stacked inputs), with fresh random values.

    Stacked inputs hold the primal in the first B samples and the tangent in the last B;
    everything else (biases, weights, RoPE tables, eps) is a constant. ``in_float64``: the
    same values (rounded to ``dtype``) as float64, for a reference evaluation."""
    g = torch.Generator().manual_seed(seed)
    opmath = torch.promote_types(dtype, torch.float32)

    def rand(*shape, as_dtype=dtype):
        x = torch.randn(*shape, generator=g, dtype=torch.float64).to(device, as_dtype)
        return x.double() if in_float64 else x

    bias, weight = rand(C), rand(C)
    angles = torch.rand(S, 1, 1, HEAD_DIM // 2, generator=g, dtype=torch.float64).to(device) * 6
    cos, sin = (f(angles).to(opmath).to(torch.float64 if in_float64 else opmath) for f in (torch.cos, torch.sin))
    x, update = rand(S, 2 * B, C), rand(S, 2 * B, C)
    shift, scale, gate = (rand(1, 2 * B, C, as_dtype=opmath) for _ in range(3))
    total = rand(S, 2 * B, 1, as_dtype=opmath).abs() * C + 1
    return {
        "bias_gelu": (lambda t, c, y: ew.bias_gelu(y, bias, tangent=t, compiled=c), (x,)),
        "modulate": (lambda t, c, y, sh, sc: ew.modulate(y, sh, sc, 1e-6, tangent=t, compiled=c), (x, shift, scale)),
        "layer_norm": (lambda t, c, y: ew.layer_norm(y, weight, bias, 1e-5, tangent=t, compiled=c), (x,)),
        "bias_gated_residual": (lambda t, c, y, u, gt: ew.bias_gated_residual(y, u, bias, gt, tangent=t, compiled=c),
                                (x, update, gate)),
        "bias_residual": (lambda t, c, y, u: ew.bias_residual(y, u, bias, tangent=t, compiled=c), (x, update)),
        "bias_sum_squares": (lambda t, c, y: ew.bias_sum_squares(y, bias, tangent=t, compiled=c), (x,)),
        "bias_rms_normalise_rope": (
            lambda t, c, y, tot: ew.bias_rms_normalise(y, bias, tot, weight, C, 1e-6, HEAD_DIM, cos, sin,
                                                       tangent=t, compiled=c), (x, total)),
        "bias_rms_normalise": (
            lambda t, c, y, tot: ew.bias_rms_normalise(y, bias, tot, weight, C, 1e-6, HEAD_DIM, None, None,
                                                       tangent=t, compiled=c), (x, total)),
    }


NAMES = list(_cases(torch.float64, "cpu", 0))


@pytest.mark.parametrize("name", NAMES)
def test_tangent_form_is_the_jvp_of_the_plain_form(name):
    call, stacked = _cases(torch.float64, "cpu", 1 + NAMES.index(name))[name]
    primals, tangents = zip(*(x.chunk(2, dim=1) for x in stacked))
    want = stack(*torch.func.jvp(lambda *p: call(False, False, *p), primals, tangents))
    got = call(True, False, *stacked)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert want.chunk(2, dim=1)[1].abs().max() > 0.1  # the tangent is not trivially zero


def _relative(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_compiled_pieces_are_as_accurate_as_eager_on_gpu(name, dtype):
    """Compiled and eager round intermediates differently (inductor keeps them in float32), so
    both are compared with a float64 evaluation of the same inputs: the compiled error must be
    at most the eager one plus a little."""
    call, stacked = _cases(dtype, "cuda", 100 + NAMES.index(name))[name]
    exact, stacked64 = _cases(dtype, "cuda", 100 + NAMES.index(name), in_float64=True)[name]
    for tangent in (False, True):
        inputs, inputs64 = (tuple(x if tangent else x.chunk(2, dim=1)[0] for x in xs) for xs in (stacked, stacked64))
        reference = exact(tangent, False, *inputs64)
        eager, fused = call(tangent, False, *inputs), call(tangent, True, *inputs)
        assert fused.dtype == eager.dtype
        assert _relative(fused, reference) <= 1.5 * _relative(eager, reference) + 1e-6, (tangent, dtype)
