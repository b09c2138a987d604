"""The models' elementwise pieces (Wan, Cosmos): hand-derived tangents against torch.func.jvp of the plain forms
(float64), and on a GPU the compiled kernels against the eager formulas."""

import pytest
import torch

from megatron_rcm.models.tangent import stack
from megatron_rcm.models import elementwise as ew

from megatron_rcm.testing import norm_relative_error

S, B, HEADS, HEAD_DIM = 6, 2, 3, 8
C = HEADS * HEAD_DIM


def _cases(dtype, device, seed, in_float64=False, constants_require_grad=False):
    """name -> (piece, stacked inputs, args(*inputs) -> the piece's arguments), fresh random values.

    Stacked inputs hold the primal in the first B samples and the tangent in the last B;
    the rest (biases, weights, RoPE tables, eps) are constants. ``in_float64``: the same values
    (rounded to ``dtype``) as float64, for a reference evaluation."""
    g = torch.Generator().manual_seed(seed)
    opmath = torch.promote_types(dtype, torch.float32)

    def rand(*shape, as_dtype=dtype):
        x = torch.randn(*shape, generator=g, dtype=torch.float64).to(device, as_dtype)
        return x.double() if in_float64 else x

    bias, weight = rand(C).requires_grad_(constants_require_grad), rand(C).requires_grad_(constants_require_grad)
    head_weight, k_head_weight = (rand(HEAD_DIM).requires_grad_(constants_require_grad) for _ in range(2))
    angles = torch.rand(S, 1, 1, HEAD_DIM // 2, generator=g, dtype=torch.float64).to(device) * 6
    cos, sin = (f(angles).to(opmath).to(torch.float64 if in_float64 else opmath) for f in (torch.cos, torch.sin))
    x, update = rand(S, 2 * B, C), rand(S, 2 * B, C)
    shift, scale, gate = (rand(1, 2 * B, C, as_dtype=opmath) for _ in range(3))
    total = rand(S, 2 * B, 1, as_dtype=opmath).abs() * C + 1
    return {
        "bias_gelu": (ew.bias_gelu, (x,), lambda y: (y, bias)),
        "bias_gelu_erf": (ew.bias_gelu_erf, (x,), lambda y: (y, bias)),
        "modulate": (ew.modulate, (x, shift, scale), lambda y, sh, sc: (y, sh, sc, 1e-6)),
        "layer_norm": (ew.layer_norm, (x,), lambda y: (y, weight, bias, 1e-5)),
        "bias_gated_residual": (ew.bias_gated_residual, (x, update, gate), lambda y, u, gt: (y, u, bias, gt)),
        "gated_residual_modulate": (ew.gated_residual_modulate, (x, update, gate, shift, scale),
                                    lambda y, u, gt, sh, sc: (y, u, None, gt, sh, sc, 1e-6)),
        "gated_residual": (ew.bias_gated_residual, (x, update, gate), lambda y, u, gt: (y, u, None, gt)),
        "bias_residual": (ew.bias_residual, (x, update), lambda y, u: (y, u, bias)),
        "bias_sum_squares": (ew.bias_sum_squares, (x,), lambda y: (y, bias)),
        "bias_rms_normalise_rope": (ew.bias_rms_normalise, (x, total),
                                    lambda y, tot: (y, bias, tot, weight, C, 1e-6, HEAD_DIM, cos, sin)),
        "bias_rms_normalise": (ew.bias_rms_normalise, (x, total),
                               lambda y, tot: (y, bias, tot, weight, C, 1e-6, HEAD_DIM, None, None)),
        "head_rms_norm_rope": (ew.head_rms_norm, (x,), lambda y: (y, head_weight, 1e-6, HEAD_DIM, cos, sin)),
        "head_rms_norm": (ew.head_rms_norm, (x,), lambda y: (y, head_weight, 1e-6, HEAD_DIM, None, None)),
        "qk_head_rms_norm_rope": (ew.qk_head_rms_norm, (torch.cat([x, update], dim=-1),),
                                  lambda y: (y, head_weight, k_head_weight, 1e-6, HEAD_DIM, cos, sin)),
    }


NAMES = list(_cases(torch.float64, "cpu", 0))


def _primal(stacked):
    return tuple(x.chunk(2, dim=1)[0] for x in stacked)


def _outputs(out):
    """A piece's outputs as a tuple (some pieces return several)."""
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("name", NAMES)
def test_tangent_form_is_the_jvp_of_the_plain_form(name):
    piece, stacked, args = _cases(torch.float64, "cpu", 1 + NAMES.index(name))[name]
    primals, tangents = zip(*(x.chunk(2, dim=1) for x in stacked))
    out, out_t = torch.func.jvp(lambda *p: piece.plain(*args(*p)), primals, tangents)
    got = _outputs(piece(*args(*stacked), tangent=True, compiled=False))
    assert len(got) == len(_outputs(out))
    for got_one, want in zip(got, map(stack, _outputs(out), _outputs(out_t))):
        assert got_one.shape == want.shape
        torch.testing.assert_close(got_one, want, rtol=1e-12, atol=1e-12)
        assert want.chunk(2, dim=1)[1].abs().max() > 0.1  # the tangent is not trivially zero


@pytest.mark.parametrize("name", NAMES)
def test_backward_form_is_autograd_of_the_plain_form(name):
    """Gradients of every tensor argument (inputs, bias, weight, gate, sums of squares)."""
    piece, stacked, args = _cases(torch.float64, "cpu", 50 + NAMES.index(name), constants_require_grad=True)[name]
    inputs = [x.requires_grad_() for x in _primal(stacked)]
    full = args(*inputs)
    wrt = [a for a in full if isinstance(a, torch.Tensor) and a.requires_grad]
    assert len(wrt) >= 2
    outs = _outputs(piece(*full, tangent=False, compiled=False))
    weights = [torch.randn(o.shape, dtype=o.dtype, generator=torch.Generator().manual_seed(3 + i))
               for i, o in enumerate(outs)]
    weighted = lambda outs: sum((o * w).sum() for o, w in zip(outs, weights))
    got = torch.autograd.grad(weighted(outs), wrt)
    want = torch.autograd.grad(weighted(_outputs(piece.plain(*full))), wrt)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert b.abs().max() > 0.1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_compiled_pieces_are_as_accurate_as_eager_on_gpu(name, dtype):
    """Compiled and eager round intermediates differently (inductor keeps them in float32), so
    both are compared with a float64 evaluation of the same inputs: the compiled error must be
    at most the eager one plus a little."""
    piece, stacked, args = _cases(dtype, "cuda", 100 + NAMES.index(name))[name]
    _, stacked64, args64 = _cases(dtype, "cuda", 100 + NAMES.index(name), in_float64=True)[name]
    for tangent in (False, True):
        inputs, inputs64 = (xs if tangent else _primal(xs) for xs in (stacked, stacked64))
        reference = _outputs(piece(*args64(*inputs64), tangent=tangent, compiled=False))
        eager, fused = (_outputs(piece(*args(*inputs), tangent=tangent, compiled=c)) for c in (False, True))
        for eager_one, fused_one, reference_one in zip(eager, fused, reference):
            assert fused_one.dtype == eager_one.dtype
            assert (norm_relative_error(fused_one, reference_one)
                    <= 1.5 * norm_relative_error(eager_one, reference_one) + 1e-6), (tangent, dtype)
    # the backward form, compiled, against the same form in float64
    grads = []
    for xs, make, compiled in ((stacked, args, False), (stacked, args, True), (stacked64, args64, False)):
        inputs = [x.clone().requires_grad_() for x in _primal(xs)]
        outs = _outputs(piece(*make(*inputs), tangent=False, compiled=compiled))
        loss = sum(o.double().sin().sum() * (i + 1) for i, o in enumerate(outs))
        grads.append(torch.autograd.grad(loss.to(outs[0].dtype), inputs))
    for eager, fused, reference in zip(*grads):
        assert norm_relative_error(fused, reference) <= 1.5 * norm_relative_error(eager, reference) + 1e-6, dtype
