"""The Wan elementwise pieces: hand-derived tangents against torch.func.jvp of the plain forms
(float64), and on a GPU the compiled kernels against the eager formulas."""

import pytest
import torch

from megatron_rcm.models.tangent import stack
from megatron_rcm.models.wan import elementwise as ew

S, B, HEADS, HEAD_DIM = 6, 2, 3, 8
C = HEADS * HEAD_DIM


def _cases(dtype, device, seed):
    """name -> (call(tangent, compiled, *stacked), stacked inputs), with fresh random values.

    Stacked inputs hold the primal in the first B samples and the tangent in the last B;
    everything else (biases, weights, RoPE tables, eps) is a constant."""
    g = torch.Generator().manual_seed(seed)
    opmath = torch.promote_types(dtype, torch.float32)

    def rand(*shape, as_dtype=dtype):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, as_dtype)

    bias, weight = rand(C), rand(C)
    angles = torch.rand(S, 1, 1, HEAD_DIM // 2, generator=g, dtype=torch.float64).to(device) * 6
    cos, sin = angles.cos().to(opmath), angles.sin().to(opmath)
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_compiled_pieces_match_eager_on_gpu(name, dtype):
    call, stacked = _cases(dtype, "cuda", 100 + NAMES.index(name))[name]
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}[dtype]
    for tangent in (False, True):
        inputs = stacked if tangent else tuple(x.chunk(2, dim=1)[0] for x in stacked)
        want, got = call(tangent, False, *inputs), call(tangent, True, *inputs)
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
    # the compiled plain form's backward (inductor's) against autograd of the eager one
    inputs = [x.chunk(2, dim=1)[0].clone().requires_grad_() for x in stacked]
    weights = torch.randn_like(call(False, False, *inputs))
    want = torch.autograd.grad((call(False, False, *inputs) * weights).sum(), inputs)
    got = torch.autograd.grad((call(False, True, *inputs) * weights).sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * b.abs().max().item())
