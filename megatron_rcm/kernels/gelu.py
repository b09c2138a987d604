"""The backward of GELU after a bias, on CUDA: the input's gradient and the bias's in one pass.

torch.compile makes the backward form of ``models.elementwise.bias_gelu`` one reduction kernel
whose programs each own a few columns and loop over every row (32760 at the Wan shape), with
the input's gradient stored along the way: few programs, about a third of an H200's bandwidth.
Here each program owns a strip of rows and columns and walks it a tile at a time. It stores the
input's gradient and adds each tile into a float32 tile of sums, which it reduces over rows once
at the end; a second, small pass adds the programs' column sums. The bias's gradient is still the
sum of the unrounded gradient, as in the eager formula.

Both forms of GELU are served: tanh (Wan) and erf (Cosmos). Inputs in float64 are computed in
float64, which lets the CPU tests (``TRITON_INTERPRET=1``) hold the kernel to the eager formula
exactly; 16- and 32-bit inputs in float32.
"""
import contextlib
from typing import NamedTuple

import torch
import triton
import triton.language as tl


class Launch(NamedTuple):
    """How the kernel tiles its [rows, C] input."""

    block_rows: int  # rows of one tile
    block_cols: int  # columns of one program (and of its tiles)
    rows_per_program: int  # rows one program walks through, a multiple of block_rows
    num_warps: int


# picked on an H200 at the Wan FFN shape, 32760 x 8960 bf16 (tools/bench_elementwise.py
# --gelu-launches; docs/benchmarks.md)
LAUNCH = Launch(32, 128, 256, 8)


@triton.jit
def _slope(a, EXACT: tl.constexpr):
    """d GELU / da, erf form if EXACT, else tanh form. tanh(u) and 1 - tanh(u)^2 come from
    t = exp(-2 |u|) (which cannot overflow): the latter as 4 t / (1 + t)^2, without the
    cancellation of 1 - tanh^2 where |u| is large."""
    if EXACT:  # 1 / sqrt(2), 1 / sqrt(2 pi)
        return 0.5 * (1 + tl.erf(a * 0.7071067811865476)) + a * tl.exp(-0.5 * a * a) * 0.3989422804014327
    k: tl.constexpr = 0.7978845608028654  # sqrt(2 / pi); a constexpr keeps float64 exact
    u = k * (a + 0.044715 * a * a * a)
    t = tl.exp(-2 * tl.abs(u))
    tanh = tl.where(u < 0, t - 1, 1 - t) / (1 + t)
    sech2 = 4 * t / ((1 + t) * (1 + t))
    return 0.5 * (1 + tanh) + 0.5 * a * sech2 * k * (1 + 3 * 0.044715 * a * a)


@triton.jit
def _bias_gelu_backward_kernel(Grad, Y, Bias, GradY, ColumnSums, rows, cols,
                               HAS_BIAS: tl.constexpr, ROUND_SUM: tl.constexpr, EXACT: tl.constexpr,
                               COMPUTE: tl.constexpr,
                               ROWS_PER_PROGRAM: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    row_program = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_ok = offs_c < cols
    if HAS_BIAS:
        bias = tl.load(Bias + offs_c, mask=col_ok, other=0.0)
    sums = tl.zeros([BLOCK_ROWS, BLOCK_COLS], COMPUTE)  # reduced over rows once, after the loop
    first_row = row_program * ROWS_PER_PROGRAM
    for start in range(first_row, first_row + ROWS_PER_PROGRAM, BLOCK_ROWS):
        offs_r = start + tl.arange(0, BLOCK_ROWS)
        mask = (offs_r < rows)[:, None] & col_ok[None, :]
        offsets = offs_r.to(tl.int64)[:, None] * cols + offs_c[None, :]
        y = tl.load(Y + offsets, mask=mask, other=0.0)
        if HAS_BIAS:
            y = y.to(COMPUTE) + bias[None, :].to(COMPUTE)
            if ROUND_SUM:  # to y's dtype, as torch rounds y + bias where the bias's dtype does not promote y's
                y = y.to(Y.dtype.element_ty)
        g = tl.load(Grad + offsets, mask=mask, other=0.0).to(COMPUTE) * _slope(y.to(COMPUTE), EXACT)
        tl.store(GradY + offsets, g.to(GradY.dtype.element_ty), mask=mask)
        sums += g  # masked entries are 0 * a finite slope
    tl.store(ColumnSums + row_program * cols + offs_c, tl.sum(sums, 0), mask=col_ok)


def bias_gelu_backward(grad, y, bias, *, exact, launch=LAUNCH):
    """Gradients of ``gelu(y + bias)`` (tanh form, or erf form if ``exact``) for the incoming
    ``grad``: (of y in y's dtype, of bias in its dtype, or None without a bias). CUDA tensors
    ``[..., C]`` (or CPU under ``TRITON_INTERPRET=1``), bias ``[C]`` or None."""
    if launch.rows_per_program % launch.block_rows:
        raise ValueError(f"{launch}: rows_per_program must be a multiple of block_rows")
    cols = y.shape[-1]
    y2, grad2 = y.reshape(-1, cols).contiguous(), grad.reshape(-1, cols).contiguous()
    rows = y2.shape[0]
    has_bias = bias is not None
    sum_dtype = torch.promote_types(y.dtype, bias.dtype) if has_bias else y.dtype
    compute = torch.float64 if sum_dtype == torch.float64 else torch.float32
    grad_y = torch.empty_like(y2)
    row_programs = triton.cdiv(rows, launch.rows_per_program)
    column_sums = torch.empty(row_programs, cols, dtype=compute, device=y.device)
    with torch.cuda.device(y.device) if y.is_cuda else contextlib.nullcontext():
        _bias_gelu_backward_kernel[(row_programs, triton.cdiv(cols, launch.block_cols))](
            grad2, y2, bias if has_bias else y2, grad_y, column_sums, rows, cols,
            HAS_BIAS=has_bias, ROUND_SUM=sum_dtype == y.dtype, EXACT=exact,
            COMPUTE=tl.float64 if compute == torch.float64 else tl.float32,
            ROWS_PER_PROGRAM=launch.rows_per_program, BLOCK_ROWS=launch.block_rows, BLOCK_COLS=launch.block_cols,
            num_warps=launch.num_warps)
    grad_bias = column_sums.sum(0).view(bias.shape).to(bias.dtype) if has_bias else None
    return grad_y.view(y.shape), grad_bias

