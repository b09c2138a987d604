"""The Gluon kernel for Hopper against the float64 reference and the Triton kernel (sm_90 GPUs only:
Gluon has no interpreter; run with pytest -m gpu tests/kernels)."""
import pytest
import torch

from megatron_rcm.kernels import flash_attention_jvp
from megatron_rcm.kernels.flash_jvp import PINNED_MAX_KEYS, flash_jvp_hopper, launch, launch_config, launch_hopper

from megatron_rcm.testing import relative_error
from .helpers import inputs_with_key_rows_past_2_to_the_31, random_inputs, reference_jvp, sbhd_views

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    flash_jvp_hopper is None or not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
    reason="needs an sm_90 GPU and Triton with Gluon")]


def _hopper(q, k, v, q_t, k_t, v_t, config=None):
    """The Gluon kernel at ``config``, by default its CONFIGS entry for the call."""
    return launch_hopper(q, k, v, q_t, k_t, v_t, q.shape[-1] ** -0.5, config)


def _check_against_reference_and_triton(inputs, kv_tangent, tolerance, config=None):
    """Each output within ``tolerance`` of the float64 reference and within 1.5x of the Triton
    kernel's error (the same bf16/fp16 roundings in another order)."""
    q, k, v, q_t, k_t, v_t = inputs
    if not kv_tangent:
        k_t, v_t = torch.zeros_like(k), torch.zeros_like(v)
    want = reference_jvp([q, k, v, q_t, k_t, v_t])
    got = _hopper(q, k, v, q_t, *((k_t, v_t) if kv_tangent else (None, None)), config=config)
    triton_kernel = launch(q, k, v, q_t, k_t, v_t, q.shape[-1] ** -0.5, None, launch_config(64, 32, 4, 2))
    for name, g, t, w in zip(("out", "out_t", "lse", "lse_t"), got, triton_kernel, want):
        error, triton_error = relative_error(g, w), relative_error(t, w)
        assert error <= tolerance, (name, error)
        assert error <= 1.5 * triton_error + 1e-5, (name, error, triton_error)


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(300, 517), (64, 64), (1, 3), (129, 40), (70, 200), (100, 1100),
                                               (70, 256), (33, 65)])
@pytest.mark.parametrize("kv_tangent", [True, False])
def test_matches_reference_as_closely_as_the_triton_kernel(dtype, tolerance, head_dim, seqlen_q, seqlen_k, kv_tangent):
    """At the pipeline shape flash_attention_jvp picks (short keys up to 1024, long beyond); key
    lengths with a partial last block, a whole number of blocks, or one key past a block."""
    inputs = sbhd_views(random_inputs(2, 3, seqlen_q, seqlen_k, head_dim, dtype, device="cuda"))
    _check_against_reference_and_triton(inputs, kv_tangent, tolerance)


def _fitting_candidates(kv_tangent):
    if flash_jvp_hopper is None:  # collected, then skipped
        return []
    return [c for c in flash_jvp_hopper.CANDIDATES if flash_jvp_hopper.fits(c, 128, kv_tangent)]


@pytest.mark.parametrize("config", _fitting_candidates(True), ids=str)
def test_every_candidate_with_key_tangents_over_ragged_short_keys(config):
    """The sweep's candidates: 226 keys (a partial last key block, as the odd cross shape has) and
    333 queries (a partial last query block), keys and values with tangents."""
    inputs = sbhd_views(random_inputs(2, 2, 333, 226, 128, torch.bfloat16, device="cuda"))
    _check_against_reference_and_triton(inputs, True, 2e-2, config)


@pytest.mark.parametrize("seqlen_k", [226, 512])
@pytest.mark.parametrize("config", _fitting_candidates(False), ids=str)
def test_every_candidate_with_constant_keys(config, seqlen_k):
    """Cross-attention's case (text keys and values without tangents): 226 keys (a partial last
    block) and 512 (the Wan text length: whole key blocks only)."""
    inputs = sbhd_views(random_inputs(1, 2, 333, seqlen_k, 128, torch.bfloat16, device="cuda"))
    _check_against_reference_and_triton(inputs, False, 2e-2, config)


@pytest.mark.parametrize("seqlen_k", [40, 64, 100, 128, 1100])
@pytest.mark.parametrize("config", [c for c in _fitting_candidates(True) if c.peel_last], ids=str)
def test_candidates_with_the_last_block_after_the_loop_at_one_two_and_many_key_blocks(config, seqlen_k):
    """peel_last runs no loop iteration at one or two key blocks, and masks only the block after the
    loop: one partial block, one whole block, two blocks (partial or whole last), many."""
    inputs = sbhd_views(random_inputs(2, 2, 150, seqlen_k, 128, torch.bfloat16, device="cuda"))
    _check_against_reference_and_triton(inputs, True, 2e-2, config)


@pytest.mark.parametrize("seqlen_k", [PINNED_MAX_KEYS + 190, 1100])
def test_flash_attention_jvp_calls_it_on_hopper_and_not_with_a_mask(seqlen_k):
    """At CONFIGS' pipeline shape for the call: short keys (but more than those the Triton kernel
    serves at its pinned configs) or long keys, with and without key tangents."""
    inputs = sbhd_views(random_inputs(2, 2, 150, seqlen_k, 128, torch.bfloat16, device="cuda"))
    for got, want in zip(flash_attention_jvp(*inputs), _hopper(*inputs)):
        assert torch.equal(got, want)
    q, k, v, q_t = inputs[:4]
    for got, want in zip(flash_attention_jvp(q, k, v, q_t), _hopper(q, k, v, q_t, None, None)):
        assert torch.equal(got, want)
    mask = torch.rand(2, seqlen_k, device="cuda") > 0.3
    masked = flash_attention_jvp(*inputs, key_padding_mask=mask)
    for got, want in zip(masked, reference_jvp(inputs, key_padding_mask=mask)):
        assert relative_error(got, want) <= 2e-2


def test_key_rows_past_2_to_the_31_elements():
    compact, long_rows = inputs_with_key_rows_past_2_to_the_31()
    for got, want in zip(_hopper(*long_rows), reference_jvp(compact)):
        assert relative_error(got, want) <= 2e-2


def test_a_compile_failure_falls_back_to_the_triton_kernel_with_a_warning(monkeypatch):
    """A Triton release whose Gluon API the kernel does not fit: flash_attention_jvp warns once and
    the Triton kernel serves this call and the next ones."""
    import ast

    from megatron_rcm.kernels import flash_jvp
    from triton.compiler.errors import CompilationError

    def fails(*args, **kwargs):
        raise CompilationError(None, ast.parse("x"), "simulated: an API this Triton lacks")

    monkeypatch.setattr(flash_jvp_hopper, "launch", fails)
    monkeypatch.setattr(flash_jvp, "_hopper_compile_errors", [])
    inputs = sbhd_views(random_inputs(1, 2, 100, PINNED_MAX_KEYS + 130, 128, torch.bfloat16, device="cuda"))
    with pytest.warns(UserWarning, match="does not compile"):
        first = flash_attention_jvp(*inputs)
    assert not flash_jvp._hopper_kernel_serves(*inputs, None)
    for got, want in zip(first, reference_jvp(inputs)):
        assert relative_error(got, want) <= 2e-2
