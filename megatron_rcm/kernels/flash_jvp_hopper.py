"""The attention forward + JVP kernel for Hopper (sm_90), in Gluon, with asynchronous wgmma.

The math and the outputs are those of ``flash_jvp`` (docs/math.md section 7); this kernel only
schedules them differently. Triton's ``tl.dot`` waits for every wgmma before the next
instruction, so the tensor cores idle while the softmax runs. Here each warpgroup owns 64 query
rows and, for key block j, issues the score GEMMs of block j (S, dS) and the value GEMMs of
block j - 1 (P V, P dV, (P * dS) V) back to back and waits only for the scores, so that the
softmax of block j can run while the value GEMMs are still on the tensor cores (FlashAttention-3's
intra-warpgroup overlap). At the shipped pipeline shapes ptxas (Triton 3.6's, 12.8) does not keep
it: the SASS waits for the value GEMMs before the softmax's first exp2, also with P in shared memory
at 240 registers (docs/kernels.md); the overlap then comes from the second CTA on the SM. Two
warpgroups (BLOCK_M = 128) share each key/value tile, or one warpgroup (BLOCK_M = 64) runs per CTA:
with little shared memory two such CTAs fit on one SM and overlap each other's loads, softmax and
stores without a barrier between them. Key and value blocks arrive by TMA, STAGES deep (1 to 4),
with separate mbarriers for keys and for values. ``CONFIGS`` holds the pipeline shape for each kind
of call (keys with or without a tangent, long or short key sequences), as
``tools/tune_flash_jvp.py`` picked them.

Gluon has no interpreter: this kernel runs on Hopper GPUs only, and is checked there against the
float64 reference and the Triton kernel (tests/kernels/test_flash_jvp_hopper.py). ``flash_jvp``
calls it for the bf16/fp16 inputs it can serve with more than ``flash_jvp.PINNED_MAX_KEYS`` keys
(``flash_jvp.route``); shorter keys go to the Triton kernel at a pinned config.
"""
import math
from typing import NamedTuple

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

SERVED_HEAD_DIMS = (64, 128)
SERVED_DTYPES = (torch.bfloat16, torch.float16)
_LOG2_E = math.log2(math.e)
# Triton 3.9 renamed these two (3.6, on the GPU machines, has only the old names)
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier


class HopperConfig(NamedTuple):
    """A pipeline shape of the kernel (the sweep's candidates are ``CANDIDATES``)."""

    block_m: int  # query rows per CTA, 64 per warpgroup: 64 or 128
    block_n: int  # keys per block
    stages: int  # key (and value) blocks in flight, 1 to 4
    # rescale the accumulators of block j - 1 while the tensor cores compute block j's scores,
    # rather than after block j - 1's value GEMMs (off the path on which the tensor cores wait)
    early_rescale: bool = False
    # run the last key block, the only one that can be partial, after the key loop, so that the loop
    # has no mask branch (a sweep candidate: slower at Wan's self-attention, docs/benchmarks.md)
    peel_last: bool = False

    @property
    def num_warps(self):
        return self.block_m // 16

    def shared_memory_bytes(self, head_dim, kv_tangent, element_size=2):
        """Q and dQ, and STAGES blocks of K, V (and of their tangents); the barriers aside."""
        tiles = 4 if kv_tangent else 2
        return (2 * self.block_m + tiles * self.stages * self.block_n) * head_dim * element_size


DEFAULT_CONFIG = HopperConfig(128, 64, 2)
# (keys and values carry a tangent, short keys) -> the pipeline shape flash_attention_jvp uses.
# Short keys (flash_jvp.SHORT_KEYS: text keys in cross-attention) make few key blocks per program,
# so that loading Q and storing the outputs weigh more than over 32k keys. flash_attention_jvp sends
# calls with up to flash_jvp.PINNED_MAX_KEYS keys to the Triton kernel: the short-key shapes serve the
# key lengths above that, and this kernel's own timings in the sweep. The fastest correct
# candidate of tools/tune_flash_jvp.py for each kind of call belongs here (its table names them);
# the figures are in docs/benchmarks.md.
# One warpgroup, 64 x 64, one stage won every swept case on an H200 (2026-12-02, docs/benchmarks.md):
# two such CTAs share an SM and hide each other's loads and stores. Long keys without a tangent
# occur in no model call and were not swept.
_ONE_WARPGROUP = HopperConfig(64, 64, 1)
CONFIGS = {
    (True, False): _ONE_WARPGROUP,  # self-attention
    (False, False): DEFAULT_CONFIG,
    (True, True): _ONE_WARPGROUP,
    (False, True): _ONE_WARPGROUP,  # cross-attention to text
}
# The pipeline shapes the sweep times: the default; one warpgroup per CTA in shared memory that lets
# two CTAs share an SM (96 KiB: 64 x 64 with one stage, or with two stages without key tangents;
# 64 x 32 with two stages); other stage counts; and each with the early rescale, or with the last
# key block after the loop.
_SHAPES = (DEFAULT_CONFIG, HopperConfig(128, 64, 1), HopperConfig(128, 32, 3), HopperConfig(128, 64, 3),
           HopperConfig(64, 64, 1), HopperConfig(64, 64, 2), HopperConfig(64, 32, 2))
CANDIDATES = [*_SHAPES, *(c._replace(early_rescale=True) for c in _SHAPES),
              *(c._replace(peel_last=True) for c in _SHAPES)]
_SHARED_MEMORY_BYTES = 227 * 1024


def fits(config: HopperConfig, head_dim: int, kv_tangent: bool) -> bool:
    """Whether the config's shared memory fits one H100/H200 CTA."""
    return config.shared_memory_bytes(head_dim, kv_tangent) <= _SHARED_MEMORY_BYTES


@gluon.jit
def _descriptor(base, rows, row_stride, BLOCK_ROWS: gl.constexpr, HEAD_DIM: gl.constexpr):
    layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_ROWS, HEAD_DIM], base.dtype.element_ty)
    return tma.make_tensor_descriptor(base, shape=[rows, HEAD_DIM], strides=[row_stride, 1],
                                      block_shape=[BLOCK_ROWS, HEAD_DIM], layout=layout)


@gluon.jit
def _load_tiles(desc, tangent_desc, bufs, tangent_bufs, ready, block, n_blocks, STAGES: gl.constexpr,
                TANGENT: gl.constexpr):
    """TMA copies of block ``block`` (if it exists) of keys or values, and of their tangent, into
    its stage; ready[stage] completes when they have landed."""
    BLOCK_N: gl.constexpr = desc.block_type.shape[0]
    HEAD_DIM: gl.constexpr = desc.block_type.shape[1]
    TILES: gl.constexpr = 2 if TANGENT else 1
    stage = block % STAGES
    exists = block < n_blocks
    bar = ready.index(stage)
    mbarrier.expect(bar, TILES * BLOCK_N * HEAD_DIM * desc.dtype.primitive_bitwidth // 8, pred=exists)
    _tma_load(desc, [block * BLOCK_N, 0], bar, bufs.index(stage), pred=exists)
    if TANGENT:
        _tma_load(tangent_desc, [block * BLOCK_N, 0], bar, tangent_bufs.index(stage), pred=exists)


@gluon.jit
def _wait_stage(ready, block, STAGES: gl.constexpr):
    mbarrier.wait(ready.index(block % STAGES), (block // STAGES) & 1)


@gluon.jit
def _issue_scores(q_smem, qt_smem, k_smem, kt_smem, zero, KV_TANGENT: gl.constexpr):
    """Asynchronous S = Q K^T and dS = dQ K^T + Q dK^T (unscaled); 2 or 3 wgmma groups."""
    k_trans = k_smem.permute((1, 0))
    s = warpgroup_mma(q_smem, k_trans, zero, use_acc=False, is_async=True)
    ds = warpgroup_mma(qt_smem, k_trans, zero, use_acc=False, is_async=True)
    if KV_TANGENT:
        ds = warpgroup_mma(q_smem, kt_smem.permute((1, 0)), ds, is_async=True)
    return s, ds


@gluon.jit
def _issue_values(p, p_ds, v_smem, vt_smem, acc, acc_t, KV_TANGENT: gl.constexpr):
    """Asynchronous acc += P V and acc_t += P dV + (P * dS) V; 2 or 3 wgmma groups."""
    acc = warpgroup_mma(p, v_smem, acc, is_async=True)
    if KV_TANGENT:
        acc_t = warpgroup_mma(p, vt_smem, acc_t, is_async=True)
    acc_t = warpgroup_mma(p_ds, v_smem, acc_t, is_async=True)
    return acc, acc_t


@gluon.jit
def _softmax(s, ds, m_i, l_i, r_i, start_n, seqlen_k, qk_scale, softmax_scale, MAY_BE_PARTIAL: gl.constexpr):
    """Online-softmax step for one key block: (m, l, r, P, P * dS, alpha); m in log2 units.
    MAY_BE_PARTIAL: the block may be the last, partial one, which must be masked."""
    BLOCK_N: gl.constexpr = s.shape[1]
    if MAY_BE_PARTIAL:
        if start_n + BLOCK_N > seqlen_k:  # the last, partial block: TMA filled its missing keys with zeros
            cols = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s.type.layout))
            s = gl.where((cols < seqlen_k)[None, :], s, float("-inf"))
    # The scores stay unscaled: the scale is positive, so the scaled row maximum is max(s) * scale,
    # and exp2's argument is one FMA per score (scaling every score first costs 2-3% of the call).
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(s * qk_scale - m_new[:, None])
    p_ds = p * (ds * softmax_scale)
    l_i = l_i * alpha + gl.sum(p, 1)
    r_i = r_i * alpha + gl.sum(p_ds, 1)
    return m_new, l_i, r_i, p, p_ds, alpha


@gluon.jit
def _rescaled(acc, acc_t, alpha, rows_o: gl.constexpr):
    alpha_o = gl.convert_layout(alpha, rows_o)[:, None]
    return acc * alpha_o, acc_t * alpha_o


@gluon.jit
def _key_block(j, n_blocks, q_bufs, k_bufs, kt_bufs, v_bufs, vt_bufs, k_ready, v_ready, k_desc, kt_desc, v_desc,
               vt_desc, zero, m_i, l_i, r_i, p, p_ds, alpha, acc, acc_t, seqlen_k, qk_scale, softmax_scale,
               rows_o: gl.constexpr, p_layout: gl.constexpr, STAGES: gl.constexpr, KV_TANGENT: gl.constexpr,
               EARLY_RESCALE: gl.constexpr, MAY_BE_PARTIAL: gl.constexpr):
    """Key block j >= 1: its score GEMMs beside block j - 1's value GEMMs, then its softmax; returns
    the running (m, l, r), block j's P and P * dS, its alpha and the accumulators."""
    dtype: gl.constexpr = k_bufs.dtype
    BLOCK_N: gl.constexpr = k_bufs.shape[1]
    VALUE_GROUPS: gl.constexpr = 3 if KV_TANGENT else 2
    # 0, but not a constant: for shared-memory operands at a constant place the compiler hoists
    # the descriptors of every wgmma out of the loop, and they spill (Triton 3.6: 36 bytes at
    # the default shape, 500 with one stage; none this way)
    loop_zero = j // n_blocks
    if STAGES == 1:
        stage = loop_zero
        prev = loop_zero
    else:
        stage = j % STAGES
        prev = (j - 1) % STAGES
    _wait_stage(k_ready, j, STAGES)
    s, ds = _issue_scores(q_bufs.index(loop_zero), q_bufs.index(loop_zero + 1), k_bufs.index(stage),
                          kt_bufs.index(stage), zero, KV_TANGENT)
    if EARLY_RESCALE:  # block j - 1's alpha (block 0's is 0, and so are the accumulators)
        acc, acc_t = _rescaled(acc, acc_t, alpha, rows_o)
    _wait_stage(v_ready, j - 1, STAGES)
    acc, acc_t = _issue_values(p, p_ds, v_bufs.index(prev), vt_bufs.index(prev), acc, acc_t, KV_TANGENT)
    s, ds = warpgroup_mma_wait(VALUE_GROUPS, deps=[s, ds])
    _cta_barrier()
    _load_tiles(k_desc, kt_desc, k_bufs, kt_bufs, k_ready, j + STAGES, n_blocks, STAGES, KV_TANGENT)
    m_i, l_i, r_i, p_next, p_ds_next, alpha = _softmax(s, ds, m_i, l_i, r_i, j * BLOCK_N, seqlen_k, qk_scale,
                                                       softmax_scale, MAY_BE_PARTIAL)
    acc, acc_t, p, p_ds = warpgroup_mma_wait(0, deps=[acc, acc_t, p, p_ds])
    _cta_barrier()
    _load_tiles(v_desc, vt_desc, v_bufs, vt_bufs, v_ready, j - 1 + STAGES, n_blocks, STAGES, KV_TANGENT)
    if not EARLY_RESCALE:
        acc, acc_t = _rescaled(acc, acc_t, alpha, rows_o)
    p = gl.convert_layout(p_next.to(dtype), p_layout)
    p_ds = gl.convert_layout(p_ds_next.to(dtype), p_layout)
    return m_i, l_i, r_i, p, p_ds, alpha, acc, acc_t


@gluon.jit
def _flash_jvp_hopper_kernel(
    Q, K, V, QT, KT, VT, Out, OutT, Lse, LseT,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_qtb, stride_qth, stride_qtm,
    stride_ktb, stride_kth, stride_ktn, stride_vtb, stride_vth, stride_vtn,
    stride_ob, stride_oh, stride_om,
    num_heads, seqlen_q, seqlen_k, softmax_scale, qk_scale,
    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
    KV_TANGENT: gl.constexpr, EARLY_RESCALE: gl.constexpr, PEEL_LAST: gl.constexpr,
):
    dtype: gl.constexpr = Q.dtype.element_ty
    NUM_WARPS: gl.constexpr = gl.num_warps()
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)

    start_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    off_b = (pid_bh // num_heads).to(gl.int64)
    off_h = (pid_bh % num_heads).to(gl.int64)

    q_desc = _descriptor(Q + off_b * stride_qb + off_h * stride_qh, seqlen_q, stride_qm, BLOCK_M, HEAD_DIM)
    qt_desc = _descriptor(QT + off_b * stride_qtb + off_h * stride_qth, seqlen_q, stride_qtm, BLOCK_M, HEAD_DIM)
    k_desc = _descriptor(K + off_b * stride_kb + off_h * stride_kh, seqlen_k, stride_kn, BLOCK_N, HEAD_DIM)
    v_desc = _descriptor(V + off_b * stride_vb + off_h * stride_vh, seqlen_k, stride_vn, BLOCK_N, HEAD_DIM)
    kt_desc = _descriptor(KT + off_b * stride_ktb + off_h * stride_kth, seqlen_k, stride_ktn, BLOCK_N, HEAD_DIM)
    vt_desc = _descriptor(VT + off_b * stride_vtb + off_h * stride_vth, seqlen_k, stride_vtn, BLOCK_N, HEAD_DIM)

    # Q and dQ in one buffer, which the key loop indexes with a runtime 0 (see _key_block)
    q_bufs = gl.allocate_shared_memory(dtype, [2, BLOCK_M, HEAD_DIM], q_desc.layout)
    q_smem = q_bufs.index(0)
    qt_smem = q_bufs.index(1)
    k_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    if KV_TANGENT:
        kt_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        vt_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    else:  # never read
        kt_bufs, vt_bufs = k_bufs, v_bufs
    q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_ready, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
    fence_async_shared()

    first_row = start_m * BLOCK_M
    mbarrier.expect(q_ready, 2 * BLOCK_M * HEAD_DIM * dtype.primitive_bitwidth // 8)
    _tma_load(q_desc, [first_row, 0], q_ready, q_smem)
    _tma_load(qt_desc, [first_row, 0], q_ready, qt_smem)
    # Blocks 0 .. STAGES - 1 fill every stage. Keys are refilled as soon as the score GEMMs that
    # read them are done, values once the value GEMMs are; each refill first waits for all warps
    # (with two warpgroups, the other one may still be reading the stage).
    n_blocks = gl.cdiv(seqlen_k, BLOCK_N)
    for i in gl.static_range(STAGES):
        _load_tiles(k_desc, kt_desc, k_bufs, kt_bufs, k_ready, i, n_blocks, STAGES, KV_TANGENT)
        _load_tiles(v_desc, vt_desc, v_bufs, vt_bufs, v_ready, i, n_blocks, STAGES, KV_TANGENT)

    zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([BLOCK_M], gl.float32, gl.SliceLayout(1, s_layout))
    r_i = gl.zeros([BLOCK_M], gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    acc_t = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

    # block 0: scores and softmax only; its value GEMMs run alongside block 1's softmax
    mbarrier.wait(q_ready, 0)
    _wait_stage(k_ready, 0, STAGES)
    s, ds = _issue_scores(q_smem, qt_smem, k_bufs.index(0), kt_bufs.index(0), zero, KV_TANGENT)
    s, ds = warpgroup_mma_wait(0, deps=[s, ds])
    _cta_barrier()
    _load_tiles(k_desc, kt_desc, k_bufs, kt_bufs, k_ready, STAGES, n_blocks, STAGES, KV_TANGENT)
    m_i, l_i, r_i, p, p_ds, alpha = _softmax(s, ds, m_i, l_i, r_i, 0, seqlen_k, qk_scale, softmax_scale, True)
    p = gl.convert_layout(p.to(dtype), p_layout)
    p_ds = gl.convert_layout(p_ds.to(dtype), p_layout)

    # the key loop; with peel_last the last block follows it, so that the loop needs no mask branch
    loop_end = n_blocks - 1 if PEEL_LAST else n_blocks
    for j in range(1, loop_end):
        m_i, l_i, r_i, p, p_ds, alpha, acc, acc_t = _key_block(
            j, n_blocks, q_bufs, k_bufs, kt_bufs, v_bufs, vt_bufs, k_ready, v_ready, k_desc, kt_desc, v_desc,
            vt_desc, zero, m_i, l_i, r_i, p, p_ds, alpha, acc, acc_t, seqlen_k, qk_scale, softmax_scale, rows_o,
            p_layout, STAGES, KV_TANGENT, EARLY_RESCALE, not PEEL_LAST)
    if PEEL_LAST:
        if n_blocks > 1:
            m_i, l_i, r_i, p, p_ds, alpha, acc, acc_t = _key_block(
                n_blocks - 1, n_blocks, q_bufs, k_bufs, kt_bufs, v_bufs, vt_bufs, k_ready, v_ready, k_desc, kt_desc,
                v_desc, vt_desc, zero, m_i, l_i, r_i, p, p_ds, alpha, acc, acc_t, seqlen_k, qk_scale, softmax_scale,
                rows_o, p_layout, STAGES, KV_TANGENT, EARLY_RESCALE, True)

    if EARLY_RESCALE:
        acc, acc_t = _rescaled(acc, acc_t, alpha, rows_o)
    last = (n_blocks - 1) % STAGES
    _wait_stage(v_ready, n_blocks - 1, STAGES)
    acc, acc_t = _issue_values(p, p_ds, v_bufs.index(last), vt_bufs.index(last), acc, acc_t, KV_TANGENT)
    acc, acc_t, p, p_ds = warpgroup_mma_wait(0, deps=[acc, acc_t, p, p_ds])

    mbarrier.invalidate(q_ready)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_ready.index(i))
        mbarrier.invalidate(v_ready.index(i))

    # every key is attended (no mask), so l > 0
    l_o = gl.convert_layout(l_i, rows_o)
    lse_t_o = gl.convert_layout(r_i / l_i, rows_o)
    out = acc / l_o[:, None]
    out_t = acc_t / l_o[:, None] - lse_t_o[:, None] * out

    offs_m = first_row + gl.arange(0, BLOCK_M, layout=rows_o)
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    row_ok = offs_m < seqlen_q
    o_offsets = (off_b * stride_ob + off_h * stride_oh + offs_m.to(gl.int64)[:, None] * stride_om
                 + offs_d[None, :])
    gl.store(Out + o_offsets, out.to(dtype), mask=row_ok[:, None])
    gl.store(OutT + o_offsets, out_t.to(dtype), mask=row_ok[:, None])
    offs_m_s = first_row + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
    row_base = pid_bh.to(gl.int64) * seqlen_q
    ln2: gl.constexpr = 0.6931471805599453
    gl.store(Lse + row_base + offs_m_s, (m_i + gl.log2(l_i)) * ln2, mask=offs_m_s < seqlen_q)
    gl.store(LseT + row_base + offs_m_s, r_i / l_i, mask=offs_m_s < seqlen_q)


def launch(q, k, v, q_t, k_t, v_t, softmax_scale: float, outputs, config: HopperConfig):
    """Fills ``outputs`` = (out, out_t, lse, lse_t) as ``flash_jvp`` lays them out, with one
    pipeline shape. Inputs [B, H, S, D] as ``flash_attention_jvp`` checks them, on an sm_90 GPU,
    16-bit, 16-byte aligned with 16-byte aligned strides, no key mask; k_t = v_t = None for
    constant keys and values. Needs Triton's global scratch allocator for device-side descriptors
    (set by flash_jvp)."""
    out, out_t, lse, lse_t = outputs
    batch, heads, seqlen_q, head_dim = q.shape
    kv_tangent = k_t is not None
    if not fits(config, head_dim, kv_tangent):
        raise ValueError(f"{config} needs {config.shared_memory_bytes(head_dim, kv_tangent) // 1024} KiB of shared "
                         f"memory at head dim {head_dim}; a CTA has {_SHARED_MEMORY_BYTES // 1024} KiB")
    k_t, v_t = (k_t, v_t) if kv_tangent else (k, v)
    grid = (triton.cdiv(seqlen_q, config.block_m), batch * heads)
    with torch.cuda.device(q.device):
        _flash_jvp_hopper_kernel[grid](
            q, k, v, q_t, k_t, v_t, out, out_t, lse, lse_t,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *q_t.stride()[:3], *k_t.stride()[:3], *v_t.stride()[:3], *out.stride()[:3],
            heads, seqlen_q, k.shape[2], softmax_scale, softmax_scale * _LOG2_E,
            HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n, STAGES=config.stages,
            KV_TANGENT=kv_tangent, EARLY_RESCALE=config.early_rescale, PEEL_LAST=config.peel_last,
            num_warps=config.num_warps)
    return outputs
