"""The GELU backward kernel against autograd of torch's GELU in float64. On CPU it runs under
TRITON_INTERPRET=1 (float64, float32, float16); bf16 is checked on a GPU only, since the
interpreter does not round to bf16 as the hardware does."""
import pytest
import torch
import torch.nn.functional as F

from megatron_rcm.kernels.gelu import LAUNCH, Launch, bias_gelu_backward
from megatron_rcm.models import elementwise as ew
from megatron_rcm.testing import norm_relative_error

# rows over several row programs, a partial last one; columns over several column blocks, a partial last one
SHAPES = [(300, 2, 70), (37, 1, 513)]
EAGER = {False: ew._bias_gelu_backward, True: ew._bias_gelu_erf_backward}


def _inputs(shape, dtype, device, seed, with_bias=True):
    """(incoming gradient, pre-activation y, bias or None), fresh normal values rounded to dtype."""
    g = torch.Generator().manual_seed(seed)
    grad, y = torch.randn(shape, generator=g, dtype=torch.float64), 3 * torch.randn(shape, generator=g,
                                                                                      dtype=torch.float64)
    bias = torch.randn(shape[-1], generator=g, dtype=torch.float64) if with_bias else None
    return [None if t is None else t.to(device, dtype) for t in (grad, y, bias)]


def _autograd(grad, y, bias, exact):
    """Gradients (of y, of the bias if any) of torch's GELU of y + bias, in float64."""
    y = y.double().requires_grad_()
    bias = None if bias is None else bias.double().requires_grad_()
    out = F.gelu(y if bias is None else y + bias, approximate="none" if exact else "tanh")
    return torch.autograd.grad(out, [t for t in (y, bias) if t is not None], grad.double())


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("exact", [False, True], ids=["tanh", "erf"])
@pytest.mark.parametrize("shape", SHAPES, ids=["rows", "cols"])
def test_float64_matches_autograd(shape, exact, with_bias):
    grad, y, bias = _inputs(shape, torch.float64, "cpu", seed=len(shape) + shape[0] + exact)
    assert shape[0] * shape[1] > LAUNCH.rows_per_program or shape[-1] > LAUNCH.block_cols  # several programs
    got = bias_gelu_backward(grad, y, bias, exact=exact)
    want = _autograd(grad, y, bias, exact)
    assert (got[1] is None) == (bias is None)
    for got_one, want_one in zip(got, want):
        assert got_one.shape == want_one.shape and got_one.dtype == torch.float64
        torch.testing.assert_close(got_one, want_one, rtol=1e-12, atol=1e-12)
        assert want_one.abs().max() > 0.1


def _check_as_accurate_as_eager(dtype, device, slack):
    for shape in SHAPES:
        for exact in (False, True):
            grad, y, bias = _inputs(shape, dtype, device, seed=7 + exact)
            got = bias_gelu_backward(grad, y, bias, exact=exact)
            eager = EAGER[exact](grad, y, bias)
            want = _autograd(grad, y, bias, exact)
            for got_one, eager_one, want_one in zip(got, eager, want):
                assert got_one.dtype == eager_one.dtype == dtype
                error, eager_error = norm_relative_error(got_one, want_one), norm_relative_error(eager_one, want_one)
                assert error <= 1.5 * eager_error + slack, (shape, exact, error, eager_error)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_low_precision_is_as_accurate_as_the_eager_formula(dtype):
    _check_as_accurate_as_eager(dtype, "cpu", slack=1e-7)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_on_gpu_as_accurate_as_the_eager_formula_and_what_the_piece_runs(dtype):
    _check_as_accurate_as_eager(dtype, "cuda", slack=1e-6)
    grad, y, bias = _inputs((4096, 2, 1000), dtype, "cuda", seed=11)
    for piece, exact in ((ew.bias_gelu, False), (ew.bias_gelu_erf, True)):
        routed = piece.run(piece.backward, (grad, y, bias), compiled=True)
        for a, b in zip(routed, bias_gelu_backward(grad, y, bias, exact=exact)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("launch", [Launch(16, 64, 48, 4), Launch(8, 32, 8, 1)], ids=str)
def test_other_launch_shapes_match_autograd(launch):
    """The shapes the benchmark sweeps give the same gradients (float64, both forms)."""
    for exact in (False, True):
        grad, y, bias = _inputs(SHAPES[0], torch.float64, "cpu", seed=3 + exact)
        for got_one, want_one in zip(bias_gelu_backward(grad, y, bias, exact=exact, launch=launch),
                                     _autograd(grad, y, bias, exact)):
            torch.testing.assert_close(got_one, want_one, rtol=1e-12, atol=1e-12)


def test_a_launch_whose_rows_per_program_is_not_a_multiple_of_its_tile_is_refused():
    grad, y, bias = _inputs(SHAPES[1], torch.float64, "cpu", seed=0)
    with pytest.raises(ValueError, match="multiple of block_rows"):
        bias_gelu_backward(grad, y, bias, exact=False, launch=Launch(32, 64, 48, 4))


def test_a_wider_bias_adds_without_rounding_to_the_input_dtype():
    """float16 y with a float32 bias: torch adds them in float32 (no float16 rounding), and so must the kernel."""
    grad, y, _ = _inputs(SHAPES[0], torch.float16, "cpu", seed=5)
    bias = torch.randn(SHAPES[0][-1], generator=torch.Generator().manual_seed(6)) / 3
    for exact in (False, True):
        got, want = bias_gelu_backward(grad, y, bias, exact=exact), EAGER[exact](grad, y, bias)
        assert got[0].dtype == torch.float16 and got[1].dtype == torch.float32
        torch.testing.assert_close(got[0], want[0], rtol=1e-3, atol=1e-3)  # one float16 rounding apart at most
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
