"""FlashAttention-2 forward + JVP in Triton (docs/math.md section 7).

One program owns BLOCK_M query rows of one (batch, head) and streams the keys in
blocks of BLOCK_N, keeping the online-softmax state (m, l) together with
O~ = P~ V, T~ = P~ dV + (P~ * dS) V and r~ = rowsum(P~ * dS), all rescaled by
the same factor. Six GEMMs per tile: S, dS (two), P V, P dV, (P * dS) V.
"""
import functools
import inspect
import math
import os
import warnings
from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

try:
    from . import flash_jvp_hopper
except ImportError:  # a Triton without Gluon's Hopper API
    flash_jvp_hopper = None

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _interpreter_config(seqlen_q: int, seqlen_k: int) -> triton.Config:
    # Under TRITON_INTERPRET=1 time goes per program and per key block, hardly per element.
    # Short sequences (the tests' shapes) get small blocks, so that they cross several key
    # blocks and a partial last one; from 64 tokens on, blocks of 64 run 8x fewer steps.
    return launch_config(64 if seqlen_q >= 64 else 32, 64 if seqlen_k >= 64 else 16, 4, 2)


_SHARED_MEMORY_BYTES = 227 * 1024  # H100/H200 per-block opt-in limit


class AttentionJVPOutput(NamedTuple):
    out: torch.Tensor
    out_t: torch.Tensor
    lse: torch.Tensor
    lse_t: torch.Tensor


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr, UPCAST_BF16: tl.constexpr):
    if UPCAST_BF16:
        # Triton's interpreter (3.9) multiplies bf16 bit patterns as integers. A product
        # of two bf16 values is exact in fp32, so the upcast dot computes the same thing.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _load_rows(ptrs, start_n, in_range, BOUNDS: tl.constexpr, USE_TMA: tl.constexpr):
    """One [BLOCK_N, HEAD_DIM] key block; rows past seqlen_k read as zeros."""
    if USE_TMA:
        # a tensor descriptor of this (batch, head): the copy engine fills rows past seqlen_k
        # with zeros, and no pointer tensors take registers
        return ptrs.load([start_n, 0])
    elif BOUNDS:
        return tl.load(ptrs, mask=in_range[:, None], other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _attend_key_block(acc, acc_t, m_i, l_i, r_i, q, q_t, k_ptrs, k_t_ptrs, v_ptrs, v_t_ptrs, mask_ptrs,
                      stride_kn, stride_ktn, stride_vn, stride_vtn, stride_maskn, start_n, offs_n, seqlen_k,
                      qk_scale, softmax_scale,
                      BOUNDS: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                      UPCAST_BF16: tl.constexpr, USE_TMA: tl.constexpr, KV_TANGENT: tl.constexpr,
                      LONG_ROWS: tl.constexpr):
    """The online-softmax state after the key block at row start_n (pointers at row 0)."""
    k_ptrs = _at(k_ptrs, start_n, stride_kn, USE_TMA, LONG_ROWS)
    k_t_ptrs = _at(k_t_ptrs, start_n, stride_ktn, USE_TMA, LONG_ROWS)
    v_ptrs = _at(v_ptrs, start_n, stride_vn, USE_TMA, LONG_ROWS)
    v_t_ptrs = _at(v_t_ptrs, start_n, stride_vtn, USE_TMA, LONG_ROWS)
    mask_ptrs += start_n * stride_maskn
    in_range = start_n + offs_n < seqlen_k  # read only for the last, partial block
    k = _load_rows(k_ptrs, start_n, in_range, BOUNDS, USE_TMA)
    if KV_TANGENT:
        k_t = _load_rows(k_t_ptrs, start_n, in_range, BOUNDS, USE_TMA)
    v = _load_rows(v_ptrs, start_n, in_range, BOUNDS, USE_TMA)
    if KV_TANGENT:
        v_t = _load_rows(v_t_ptrs, start_n, in_range, BOUNDS, USE_TMA)

    # s is in log2 units (log2(e) folded into qk_scale); ds in natural units.
    zero = tl.zeros([q.shape[0], k.shape[0]], dtype=acc.dtype)
    s = _mma(q, tl.trans(k), zero, PRECISION, UPCAST_BF16) * qk_scale
    if HAS_MASK:
        if BOUNDS:
            attend = tl.load(mask_ptrs, mask=in_range, other=0) != 0
        else:
            attend = tl.load(mask_ptrs) != 0
        s = tl.where(attend[None, :], s, float("-inf"))
    elif BOUNDS:
        s = tl.where(in_range[None, :], s, float("-inf"))
    ds = _mma(q_t, tl.trans(k), zero, PRECISION, UPCAST_BF16)
    if KV_TANGENT:
        ds = _mma(q, tl.trans(k_t), ds, PRECISION, UPCAST_BF16)
    ds = ds * softmax_scale

    acc, acc_t, m_i, l_i, r_i = _rescale(acc, acc_t, m_i, l_i, r_i, tl.maximum(m_i, tl.max(s, 1)), HAS_MASK)
    p = tl.exp2(s - _shift(m_i, HAS_MASK)[:, None])
    p_ds = p * ds
    l_i += tl.sum(p, 1)
    r_i += tl.sum(p_ds, 1)

    acc = _mma(p.to(v.dtype), v, acc, PRECISION, UPCAST_BF16)
    if KV_TANGENT:
        acc_t = _mma(p.to(v.dtype), v_t, acc_t, PRECISION, UPCAST_BF16)
    acc_t = _mma(p_ds.to(v.dtype), v, acc_t, PRECISION, UPCAST_BF16)
    return acc, acc_t, m_i, l_i, r_i


@triton.jit
def _descriptor(base, rows, row_stride, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    return tl.make_tensor_descriptor(base, shape=[rows, HEAD_DIM], strides=[row_stride, 1],
                                     block_shape=[BLOCK_N, HEAD_DIM])


@triton.jit
def _at(ptrs, start_n, stride_n, USE_TMA: tl.constexpr, LONG_ROWS: tl.constexpr):
    """Key-block pointers at row start_n; a descriptor is addressed at load time instead."""
    if USE_TMA:
        return ptrs
    elif LONG_ROWS:
        # 64-bit row offsets cost registers (spills at 128 x 64), so only where 32 bits overflow
        return ptrs + tl.cast(start_n, tl.int64) * stride_n
    else:
        return ptrs + start_n * stride_n


@triton.jit
def _shift(m, HAS_MASK: tl.constexpr):
    if HAS_MASK:
        # A row with no attended key so far keeps m = -inf; shifting by 0 instead
        # makes p = 0 and alpha = 0 rather than NaN.
        return tl.where(m == float("-inf"), 0.0, m)
    return m


@triton.jit
def _rescale(acc, acc_t, m_i, l_i, r_i, m_new, HAS_MASK: tl.constexpr):
    """The online-softmax state moved from running max m_i to m_new."""
    alpha = tl.exp2(m_i - _shift(m_new, HAS_MASK))
    return acc * alpha[:, None], acc_t * alpha[:, None], m_new, l_i * alpha, r_i * alpha


@triton.jit
def _flash_jvp_kernel(
    Q, K, V, QT, KT, VT, Out, OutT, Lse, LseT, Mask, Consts,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_qtb, stride_qth, stride_qtm,
    stride_ktb, stride_kth, stride_ktn, stride_vtb, stride_vth, stride_vtn,
    stride_maskb, stride_maskn, stride_ob, stride_oh, stride_om,
    num_heads, seqlen_q, seqlen_k, SIZE_CLASS, DESCRIPTORS_FIT,  # these two only feed the autotune key
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, UPCAST_BF16: tl.constexpr,
    KV_TANGENT: tl.constexpr, LONG_ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr,
):
    start_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // num_heads).to(tl.int64)
    off_h = (pid_bh % num_heads).to(tl.int64)

    # Scales are read from a tensor of the accumulator dtype: a scalar argument
    # would be rounded to float32 and break float64 exactness.
    softmax_scale = tl.load(Consts)
    qk_scale = tl.load(Consts + 1)
    ln2 = tl.load(Consts + 2)

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seqlen_q

    # the block's first row as a 64-bit scalar: row offsets of long sequences pass 2^31
    first_row = (start_m * BLOCK_M).to(tl.int64)
    block_rows = tl.arange(0, BLOCK_M)[:, None]
    q_ptrs = (Q + off_b * stride_qb + off_h * stride_qh + first_row * stride_qm + block_rows * stride_qm
              + offs_d[None, :])
    qt_ptrs = (QT + off_b * stride_qtb + off_h * stride_qth + first_row * stride_qtm + block_rows * stride_qtm
               + offs_d[None, :])
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    q_t = tl.load(qt_ptrs, mask=row_ok[:, None], other=0.0)

    k_base = K + off_b * stride_kb + off_h * stride_kh
    kt_base = KT + off_b * stride_ktb + off_h * stride_kth
    v_base = V + off_b * stride_vb + off_h * stride_vh
    vt_base = VT + off_b * stride_vtb + off_h * stride_vth
    if USE_TMA:
        k_ptrs = _descriptor(k_base, seqlen_k, stride_kn, BLOCK_N, HEAD_DIM)
        v_ptrs = _descriptor(v_base, seqlen_k, stride_vn, BLOCK_N, HEAD_DIM)
        if KV_TANGENT:
            kt_ptrs = _descriptor(kt_base, seqlen_k, stride_ktn, BLOCK_N, HEAD_DIM)
            vt_ptrs = _descriptor(vt_base, seqlen_k, stride_vtn, BLOCK_N, HEAD_DIM)
        else:  # never read
            kt_ptrs, vt_ptrs = k_ptrs, v_ptrs
    else:
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
        kt_ptrs = kt_base + offs_n[:, None] * stride_ktn + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        vt_ptrs = vt_base + offs_n[:, None] * stride_vtn + offs_d[None, :]
    mask_ptrs = Mask + off_b * stride_maskb + offs_n * stride_maskn

    acc_dtype = softmax_scale.dtype
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=acc_dtype)
    l_i = tl.zeros([BLOCK_M], dtype=acc_dtype)
    r_i = tl.zeros([BLOCK_M], dtype=acc_dtype)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=acc_dtype)
    acc_t = tl.zeros([BLOCK_M, HEAD_DIM], dtype=acc_dtype)

    # Full key blocks skip the bounds checks; only the last, partial one pays for them.
    full_end = (seqlen_k // BLOCK_N) * BLOCK_N
    for start_n in range(0, full_end, BLOCK_N):
        acc, acc_t, m_i, l_i, r_i = _attend_key_block(
            acc, acc_t, m_i, l_i, r_i, q, q_t, k_ptrs, kt_ptrs, v_ptrs, vt_ptrs, mask_ptrs,
            stride_kn, stride_ktn, stride_vn, stride_vtn, stride_maskn, start_n, offs_n, seqlen_k, qk_scale, softmax_scale,
            BOUNDS=False, HAS_MASK=HAS_MASK, PRECISION=PRECISION, UPCAST_BF16=UPCAST_BF16, USE_TMA=USE_TMA,
            KV_TANGENT=KV_TANGENT, LONG_ROWS=LONG_ROWS)
    if full_end < seqlen_k:
        acc, acc_t, m_i, l_i, r_i = _attend_key_block(
            acc, acc_t, m_i, l_i, r_i, q, q_t, k_ptrs, kt_ptrs, v_ptrs, vt_ptrs, mask_ptrs,
            stride_kn, stride_ktn, stride_vn, stride_vtn, stride_maskn, full_end, offs_n, seqlen_k, qk_scale, softmax_scale,
            BOUNDS=True, HAS_MASK=HAS_MASK, PRECISION=PRECISION, UPCAST_BF16=UPCAST_BF16, USE_TMA=USE_TMA,
            KV_TANGENT=KV_TANGENT, LONG_ROWS=LONG_ROWS)

    # Fully masked rows end with l = r = 0 and acc = acc_t = 0: out = out_t = 0,
    # lse = -inf, lse_t = 0.
    l_div = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_div[:, None]
    lse_t = r_i / l_div
    out_t = acc_t / l_div[:, None] - lse_t[:, None] * out
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_div)) * ln2)

    # out and out_t share one layout (q's, see _empty_outputs)
    o_ptrs = off_b * stride_ob + off_h * stride_oh + first_row * stride_om + block_rows * stride_om + offs_d[None, :]
    tl.store(Out + o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(OutT + o_ptrs, out_t.to(OutT.dtype.element_ty), mask=row_ok[:, None])
    row_base = pid_bh.to(tl.int64) * seqlen_q
    tl.store(Lse + row_base + offs_m, lse, mask=row_ok)
    tl.store(LseT + row_base + offs_m, lse_t, mask=row_ok)


def _shared_memory_estimate(block_m, block_n, head_dim, num_stages, element_size):
    # Q and dQ resident, K, dK, V, dV staged num_stages deep.
    return (2 * block_m + 4 * block_n * num_stages) * head_dim * element_size


def _prune_configs(configs, named_args, **kwargs):
    return candidate_configs(configs, kwargs["HEAD_DIM"], named_args["Q"].element_size(), named_args["DESCRIPTORS_FIT"])


def candidate_configs(configs, head_dim, element_size, descriptors_fit):
    """The configs autotuning weighs for a call: those worth tuning (``fitting_configs``), less the
    tensor-descriptor ones where descriptors cannot serve the call's tensors."""
    fitting = fitting_configs(configs, head_dim, element_size)
    if any(c.kwargs["USE_TMA"] for c in fitting) and not descriptors_fit:
        fitting = [c for c in fitting if not c.kwargs["USE_TMA"]] or [_WIDE_DTYPE_CONFIG]
    return fitting


def fitting_configs(configs, head_dim, element_size):
    """The configs worth tuning for this head dim and element size, whatever the tensors."""
    if element_size >= 4:
        # fp32 (ieee) and fp64 serve parity checks, not speed: one config, no tuning.
        return [_WIDE_DTYPE_CONFIG]
    fitting = [c for c in configs
               if _shared_memory_estimate(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], head_dim,
                                          c.num_stages, element_size) <= _SHARED_MEMORY_BYTES]
    # Two [BLOCK_M, HEAD_DIM] fp32 accumulators live in registers. At head dim 128 the others
    # spilled on sm_90a (Triton 3.6): keep 8 warps, or 4 warps with BLOCK_N = 32, or with
    # BLOCK_N = 64 when tensor descriptors take the key-block pointers out of registers.
    if head_dim >= 128:
        fitting = [c for c in fitting if c.num_warps == 8 or c.kwargs["BLOCK_N"] == 32
                   or (c.kwargs["USE_TMA"] and c.kwargs["BLOCK_N"] == 64)]
    return fitting or configs[:1]


def _present(*tensors):
    return [t for t in tensors if t is not None]


def _tma_fits(*tensors) -> bool:
    """Tensor descriptors need Hopper or newer, and 16-byte aligned bases and row strides."""
    if tensors[0].device.type != "cuda" or torch.cuda.get_device_capability(tensors[0].device)[0] < 9:
        return False
    return all(t.data_ptr() % 16 == 0 and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1])
               for t in tensors)


_hopper_compile_errors = []  # the Gluon kernel's, if it failed to compile in this process


def _hopper_kernel_serves(q, k, v, q_t, k_t, v_t, key_padding_mask) -> bool:
    """Whether the Gluon kernel for Hopper can compute this call (``route`` says whether it does):
    sm_90, bf16 or fp16, head dim 64 or 128, no key mask, descriptor-ready tensors, it compiled,
    and it is not switched off with MEGATRON_RCM_HOPPER_KERNEL=0."""
    return (_hopper_ready(q, k, v, q_t, k_t, v_t)
            and _hopper_fits(torch.cuda.get_device_capability(q.device), q.dtype, q.shape[-1],
                             key_padding_mask is not None))


def _hopper_ready(*tensors) -> bool:
    """The Gluon kernel imported, did not fail to compile, is not switched off, and tensor descriptors
    fit the tensors (a CUDA device of sm_90 or newer)."""
    return (flash_jvp_hopper is not None and not _hopper_compile_errors
            and os.environ.get("MEGATRON_RCM_HOPPER_KERNEL", "1") != "0" and _tma_fits(*_present(*tensors)))


def _hopper_fits(capability, dtype, head_dim, masked) -> bool:
    return (capability == (9, 0) and dtype in flash_jvp_hopper.SERVED_DTYPES
            and head_dim in flash_jvp_hopper.SERVED_HEAD_DIMS and not masked)


@functools.cache
def _install_descriptor_allocator():
    # device-side tensor descriptors are written to global scratch that Triton asks for
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


def launch_config(block_m, block_n, warps, stages, tma=False) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "USE_TMA": tma}, num_warps=warps,
                         num_stages=stages)


_WIDE_DTYPE_CONFIG = launch_config(64, 32, 8, 2)
# tools/tune_flash_jvp.py times each candidate on its own; on an H200 at Wan-1.3B's shape the two
# descriptor (TMA) configs were the fastest, so they lead (times in docs/benchmarks.md). The
# pointer configs stay for GPUs or tensors that descriptors cannot serve. Each config adds compile and
# benchmark time to the first call.
_CONFIGS = [launch_config(*c) for c in [
    (64, 64, 4, 3, True), (128, 64, 8, 2, True),
    (128, 32, 8, 3), (128, 64, 8, 2), (64, 32, 4, 2), (64, 64, 4, 2), (64, 128, 4, 2),
]]
_TUNES_DESCRIPTORS = any(c.kwargs["USE_TMA"] for c in _CONFIGS)

# Tuning is keyed on head dim, dtype, mask, whether descriptors fit the tensors and a
# three-valued size class, never on the lengths themselves: tiny shapes pick small blocks that
# lose at 32k tokens, so they get their own choice; large shapes with short keys (text keys in
# cross-attention, a few key blocks per program) get theirs; every other large shape reuses the
# first one tuned. A pick with descriptors is never reused for tensors they cannot serve.
_LARGE_SCORE_TILE = 1 << 22
# at most this many keys: few key blocks per program (the Hopper kernel's CONFIGS use it too)
SHORT_KEYS = 1024


def _size_class(seqlen_q: int, seqlen_k: int) -> int:
    """0: small; 1: large; 2: large with short keys."""
    if seqlen_q * seqlen_k < _LARGE_SCORE_TILE:
        return 0
    return 2 if seqlen_k <= SHORT_KEYS else 1


def hopper_config(seqlen_k: int, kv_tangent: bool):
    """The Hopper kernel's pipeline shape for a call (``flash_jvp_hopper.CONFIGS``)."""
    return flash_jvp_hopper.CONFIGS[(kv_tangent, seqlen_k <= SHORT_KEYS)]


# Calls of the Hopper kernel's kind with at most this many keys (text keys in cross-attention) go to
# the Triton kernel at a pinned config: in the sweep its best config led the Hopper kernel by 16% at
# 226 keys and by 4-7% at 512, a lead that shrinks as keys grow (the Hopper kernel leads at 32760);
# 512, the Wan text length, is the longest measured key length where Triton led.
PINNED_MAX_KEYS = 512
# (keys and values carry a tangent, at most 256 keys) -> the Triton launch config (pointers, no
# descriptors): the fastest correct Triton config per case of tools/tune_flash_jvp.py's sweep on an
# H200, each timed alone (docs/benchmarks.md, 2026-12-02); autotuning did not reach them. 64 x 32 led
# only at 226 constant keys, 128 x 64 at 512; 256 splits the two measured lengths.
PINNED_CONFIGS = {
    (True, False): launch_config(128, 64, 8, 2),  # 32760 x 512: 0.671 ms (Hopper kernel 0.700)
    (True, True): launch_config(128, 64, 8, 2),  # B2 20001 x 226: 0.513 ms (0.612)
    (False, False): launch_config(128, 64, 8, 2),  # 32760 x 512, constant keys: 0.514 ms (0.554)
    (False, True): launch_config(64, 32, 4, 2),  # B2 20001 x 226, constant keys: 0.415 ms (0.495)
}


class Route(NamedTuple):
    """The kernel that serves a call and its launch config."""

    kernel: str  # "hopper" or "triton"
    config: object = None  # a flash_jvp_hopper.HopperConfig or a fixed triton.Config; None: autotuned


def route(capability, dtype, head_dim, seqlen_k, kv_tangent, masked, hopper_ready=True, deterministic=False,
          descriptors_fit=True) -> Route:
    """Where a GPU call goes, from its properties: calls the Hopper kernel fits (sm_90, bf16 or fp16,
    head dim 64 or 128, no key mask; ``hopper_ready`` as ``_hopper_ready`` says) to it, or up to
    PINNED_MAX_KEYS keys to the Triton kernel at a pinned config; every other call to the Triton
    kernel, autotuned, or under ``deterministic`` (``torch.use_deterministic_algorithms``) at the first
    config autotuning would weigh (``descriptors_fit``: tensor descriptors can serve the call)."""
    if not (hopper_ready and _hopper_fits(capability, dtype, head_dim, masked)):
        if deterministic:
            # autotuning's pick is timed, so two processes (or two Triton caches) can pick different
            # block sizes, which sum the softmax in another order
            return Route("triton", candidate_configs(_CONFIGS, head_dim, dtype.itemsize, descriptors_fit)[0])
        return Route("triton")
    if seqlen_k <= PINNED_MAX_KEYS:
        return Route("triton", PINNED_CONFIGS[(kv_tangent, seqlen_k <= 256)])
    return Route("hopper", hopper_config(seqlen_k, kv_tangent))


def _route(q, k, v, q_t, k_t, v_t, key_padding_mask) -> Route:
    """``route`` for the tensors of a call; CPU tensors run under the interpreter."""
    if q.device.type == "cpu":
        return Route("triton", _interpreter_config(q.shape[2], k.shape[2]))
    deterministic = torch.are_deterministic_algorithms_enabled()
    return route(torch.cuda.get_device_capability(q.device), q.dtype, q.shape[-1], k.shape[2], k_t is not None,
                 key_padding_mask is not None, _hopper_ready(q, k, v, q_t, k_t, v_t), deterministic,
                 deterministic and _tma_fits(*_present(k, k_t, v, v_t)))


def _autotune_kwargs():
    # cache_results keeps the winners on disk, in Triton's cache keyed by the GPU
    # target (architecture) and the kernel source.
    kwargs = dict(configs=_CONFIGS, key=["HEAD_DIM", "HAS_MASK", "KV_TANGENT", "SIZE_CLASS", "DESCRIPTORS_FIT"],
                  prune_configs_by={"early_config_prune": _prune_configs})
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        kwargs["cache_results"] = True
    return kwargs


_flash_jvp_tuned = triton.autotune(**_autotune_kwargs())(_flash_jvp_kernel)


@functools.lru_cache(maxsize=None)
def _constants(softmax_scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor([softmax_scale, softmax_scale * math.log2(math.e), math.log(2.0)],
                        dtype=dtype, device=device)


def _check_inputs(q, k, v, q_t, k_t, v_t, softmax_scale, key_padding_mask):
    named = dict(q=q, k=k, v=v, q_t=q_t)
    if k_t is not None:  # else neither (see flash_attention_jvp)
        named.update(k_t=k_t, v_t=v_t)
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape [B, H, S, D], got {tuple(t.shape)}")
    batch, heads, seqlen_q, head_dim = q.shape
    seqlen_k = k.shape[2]
    expected = dict(q=q.shape, k=(batch, heads, seqlen_k, head_dim), v=(batch, heads, seqlen_k, head_dim))
    for name, t in named.items():
        want = tuple(expected[name.removesuffix("_t")])
        if tuple(t.shape) != want:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {want} (from q and k)")
    if seqlen_q == 0 or seqlen_k == 0 or batch * heads == 0:
        raise ValueError(f"q and k must be non-empty, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q has head dim {head_dim}; supported head dims are {SUPPORTED_HEAD_DIMS}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q has dtype {q.dtype}; supported dtypes are {SUPPORTED_DTYPES}")
    for name, t in named.items():
        if t.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but q has {q.dtype}; all inputs must share one dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim (stride {t.stride(-1)}); "
                             f"call .contiguous() on it")
    if q.device.type == "cpu" and not interpreter_enabled():
        raise ValueError("q is a CPU tensor: CPU tensors need TRITON_INTERPRET=1 (set before importing triton)")
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"q is on {q.device}; only CUDA (or CPU under TRITON_INTERPRET=1) is supported")
    if q.dtype == torch.float64 and q.device.type == "cuda":
        # Seen with Triton 3.6 on an H200: the float64 kernel does not compile.
        raise ValueError("q is float64: float64 runs only on CPU under TRITON_INTERPRET=1, not on CUDA")
    if softmax_scale is not None and not math.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale must be finite, got {softmax_scale}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise ValueError("key_padding_mask must be a bool tensor (True = attend)")
        if tuple(key_padding_mask.shape) != (batch, seqlen_k):
            raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, "
                             f"expected [B, Sk] = {(batch, seqlen_k)}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}")


# A custom op, so that torch.func transforms and torch.compile hand the launcher
# plain tensors (an autograd.Function's jvp sees functorch wrappers otherwise).
@torch.library.custom_op("megatron_rcm::flash_attention_jvp", mutates_args=())
def _flash_attention_jvp_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_t: torch.Tensor,
                            k_t: Optional[torch.Tensor], v_t: Optional[torch.Tensor], softmax_scale: float,
                            key_padding_mask: Optional[torch.Tensor]
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    kernel, config = _route(q, k, v, q_t, k_t, v_t, key_padding_mask)
    if kernel == "hopper":
        try:
            return launch_hopper(q, k, v, q_t, k_t, v_t, softmax_scale, config)
        except triton.compiler.errors.CompilationError as error:
            # Gluon's API still changes between Triton releases: a slower kernel beats no kernel
            _hopper_compile_errors.append(error)
            warnings.warn(f"the Gluon attention JVP kernel for Hopper does not compile with Triton "
                          f"{triton.__version__}; the slower Triton kernel serves instead. {error}")
            config = None
    return launch(q, k, v, q_t, k_t, v_t, softmax_scale, key_padding_mask, config)


def launch(q, k, v, q_t, k_t, v_t, softmax_scale: float, key_padding_mask, config: Optional[triton.Config]):
    """(out, out_t, lse, lse_t) of the Triton kernel at one given launch config (the interpreter
    path, pinned configs, and tests and tools/tune_flash_jvp.py weighing configs), or autotuned for
    config None (CUDA only). Inputs as flash_attention_jvp checks them (softmax_scale given)."""
    outputs = _empty_outputs(q, k)
    args, meta = _kernel_arguments(q, k, v, q_t, k_t, v_t, softmax_scale, key_padding_mask, outputs)
    grid = lambda cfg: (triton.cdiv(q.shape[2], cfg["BLOCK_M"]), q.shape[0] * q.shape[1])  # noqa: E731
    if config is None:  # the pick brings its block sizes, warps and stages
        kernel, options, descriptors = _flash_jvp_tuned, {}, _TUNES_DESCRIPTORS
    else:
        kernel, descriptors = _flash_jvp_kernel, config.kwargs["USE_TMA"]
        options = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    if q.device.type == "cpu":  # the interpreter ignores warps and stages
        kernel[grid](*args, **meta, **options)
        return outputs
    if descriptors:
        if config is not None and not _tma_fits(*_present(k, k_t, v, v_t)):
            raise ValueError("this launch config uses tensor descriptors, which need a Hopper or newer GPU "
                             "and 16-byte aligned K, K_t, V, V_t with 16-byte aligned strides")
        _install_descriptor_allocator()
    with torch.cuda.device(q.device):
        kernel[grid](*args, **meta, **options)
    return outputs


def launch_hopper(q, k, v, q_t, k_t, v_t, softmax_scale: float, config=None):
    """(out, out_t, lse, lse_t) of the Gluon kernel for Hopper at ``config``, by default its CONFIGS
    entry for the call (``hopper_config``). Inputs as ``flash_jvp_hopper.launch`` takes them."""
    _install_descriptor_allocator()
    config = config or hopper_config(k.shape[2], k_t is not None)
    return flash_jvp_hopper.launch(q, k, v, q_t, k_t, v_t, softmax_scale, _empty_outputs(q, k), config)


def _kernel_arguments(q, k, v, q_t, k_t, v_t, softmax_scale, key_padding_mask, outputs):
    """(positional args, constexpr meta) of ``_flash_jvp_kernel`` without the block sizes, for
    checked inputs and the (out, out_t, lse, lse_t) buffers it writes."""
    out, out_t, lse, lse_t = outputs
    _, heads, seqlen_q, head_dim = q.shape
    seqlen_k = k.shape[2]
    has_mask = key_padding_mask is not None
    # Without a mask the pointer is never read; q stands in for it. So do k and v for absent
    # key/value tangents.
    mask = key_padding_mask.view(torch.uint8) if has_mask else q
    mask_strides = (mask.stride(0), mask.stride(1)) if has_mask else (0, 0)
    kv_tangent = k_t is not None
    descriptors_fit = _tma_fits(*_present(k, k_t, v, v_t))
    k_t, v_t = (k_t, v_t) if kv_tangent else (k, v)
    args = (q, k, v, q_t, k_t, v_t, out, out_t, lse, lse_t, mask,
            _constants(softmax_scale, lse.dtype, q.device),
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *q_t.stride()[:3], *k_t.stride()[:3], *v_t.stride()[:3],
            *mask_strides, *out.stride()[:3], heads, seqlen_q, seqlen_k, _size_class(seqlen_q, seqlen_k),
            int(descriptors_fit))
    # fp32 must not drop to tf32; 16-bit inputs ignore the setting.
    precision = "ieee" if q.dtype in (torch.float32, torch.float64) else "tf32"
    meta = dict(HEAD_DIM=head_dim, HAS_MASK=has_mask, PRECISION=precision,
                UPCAST_BF16=q.device.type == "cpu" and q.dtype == torch.bfloat16, KV_TANGENT=kv_tangent,
                LONG_ROWS=any((seqlen_k - 1) * t.stride(2) >= 2**31 for t in (k, k_t, v, v_t)))
    return args, meta


def _empty_outputs(q, k):
    """out and out_t [B, H, Sq, D] laid out in memory like q (as SDPA does): for the [S, B, H, D]
    storage the models use, [S, B, H, D] stays a free view; lse and lse_t [B, H, Sq]."""
    batch, heads, seqlen_q, head_dim = q.shape
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    # q's dims from outermost to innermost by stride; the head dim stays innermost
    order = sorted(range(3), key=lambda d: -q.stride(d)) + [3]
    out = torch.empty_permuted((batch, heads, seqlen_q, head_dim), order, dtype=q.dtype, device=q.device)
    lse = q.new_empty((batch, heads, seqlen_q), dtype=lse_dtype)
    return out, torch.empty_like(out), lse, torch.empty_like(lse)


@_flash_attention_jvp_op.register_fake
def _(q, k, v, q_t, k_t, v_t, softmax_scale, key_padding_mask):
    return _empty_outputs(q, k)


def flash_attention_jvp(q, k, v, q_t, k_t=None, v_t=None, softmax_scale: Optional[float] = None,
                        key_padding_mask: Optional[torch.Tensor] = None) -> AttentionJVPOutput:
    """Attention out = softmax(scale q k^T) v and its tangent along (q_t, k_t, v_t).

    Layout [B, H, S, D], any strides with the head dim contiguous. k_t = v_t = None means keys
    and values without a tangent (constants, such as text keys in cross-attention): two of the
    six GEMMs are skipped. Returns out and out_t in the input dtype, stored in q's dim order (like
    SDPA's output), lse and lse_t [B, H, Sq] (natural log) in float32, or float64 for float64
    inputs. Rows whose keys are all masked give out = out_t = 0, lse = -inf, lse_t = 0.
    """
    if (k_t is None) != (v_t is None):
        k_t = torch.zeros_like(k) if k_t is None else k_t
        v_t = torch.zeros_like(v) if v_t is None else v_t
    _check_inputs(q, k, v, q_t, k_t, v_t, softmax_scale, key_padding_mask)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    return AttentionJVPOutput(*_flash_attention_jvp_op(q, k, v, q_t, k_t, v_t, float(softmax_scale),
                                                       key_padding_mask))
