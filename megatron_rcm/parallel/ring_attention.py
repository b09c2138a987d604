"""Ring attention over the context-parallel group: exact forward, backward and JVP.

Each rank holds one contiguous chunk of the (padded) sequence: its queries, keys and values,
layout [B, H, S_chunk, D]. Key/value chunks travel around the ring (rank r sends to r+1 and
receives from r-1), so after ``cp`` steps every query chunk has met every key chunk. Padded
keys (global position >= ``valid_len``) are cut off the chunk that holds them (a chunk of
padding only is skipped); each rank derives that from the chunk's index, so lengths never travel.

* ``ring_attention`` (autograd): the forward merges per-chunk (O_i, LSE_i) online and keeps
  the global O and LSE; the backward runs the ring again, and every chunk's gradients come from
  the global O and LSE: the chunk's probabilities are then P = exp(S - LSE), exact, and
  dS = P * (dP - rowsum(dO * O)). Key/value gradients travel with their chunk and arrive home
  after the last step. Per chunk, one of PyTorch's fused attention kernels (forward with LSE,
  backward from a given O and LSE; ``chunk_kernel``): cuDNN on Hopper and newer for fp16/bf16
  (what ``scaled_dot_product_attention`` picks there, so ring and all-to-all run the same kernel),
  flash on older GPUs and on CPU (any float dtype). fp32 and fp64 on CUDA (parity checks, not
  speed) use plain torch math, which materialises the [B, H, S_chunk, S_chunk] scores.
* ``ring_attention_jvp`` (no autograd): primal and tangent chunks travel together in one
  message; each chunk goes through ``flash_attention_jvp`` and the parts are merged exactly by
  ``merge_attention_jvp`` (docs/math.md section 8).
"""

import torch
import torch.distributed as dist

from megatron_rcm.kernels import flash_attention_jvp, merge_attention_jvp


class _RingExchange:
    """Send tensors to the next rank of ``group`` and receive the previous rank's, asynchronously."""

    def __init__(self, group):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.size)
        self.prev = dist.get_global_rank(group, (self.rank - 1) % self.size)

    def start(self, *tensors):
        sent = [t.contiguous() for t in tensors]
        received = [torch.empty_like(t) for t in sent]
        ops = [op for s, r in zip(sent, received)
               for op in (dist.P2POp(dist.isend, s, self.next, self.group),
                          dist.P2POp(dist.irecv, r, self.prev, self.group))]
        # the sent tensors stay referenced until the requests are waited on
        return dist.batch_isend_irecv(ops), received, sent

    @staticmethod
    def finish(pending):
        requests, received, _sent = pending
        for request in requests:
            request.wait()
        return received

    def source(self, step):
        """Group index of the rank whose chunk this rank holds after ``step`` shifts."""
        return (self.rank - step) % self.size


def chunk_key_mask(batch, chunk_len, chunk_index, valid_len, device):
    """Key padding mask (True = attend) of chunk ``chunk_index``, or None when it has no padding."""
    # decided from the integers: reading a device tensor here would synchronise with the GPU
    # in every attention call, so the host could not queue the next layers' kernels ahead
    if (chunk_index + 1) * chunk_len <= valid_len:
        return None
    positions = chunk_index * chunk_len + torch.arange(chunk_len, device=device)
    return (positions < valid_len).expand(batch, chunk_len).contiguous()


def valid_keys(chunk_len, chunk_index, valid_len):
    """How many leading keys of chunk ``chunk_index`` are real tokens (the rest is padding)."""
    return max(0, min(chunk_len, valid_len - chunk_index * chunk_len))


def _accumulator_dtype(dtype):
    return torch.promote_types(dtype, torch.float32)


CHUNK_KERNELS = ("cudnn", "flash", "math")


def chunk_kernel(q):
    """The kernel that attends one chunk of ``q``'s dtype and device (one of ``CHUNK_KERNELS``)."""
    if q.device.type == "cpu":
        return "flash"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return "math"
    hopper = torch.cuda.get_device_capability(q.device) >= (9, 0)
    return "cudnn" if hopper and torch.backends.cuda.cudnn_sdp_enabled() else "flash"


class _ChunkAttention:
    """Attention of the local queries over one key chunk: forward with LSE, and the backward
    from the output and LSE over all keys."""

    def __init__(self, scale, kernel):
        if kernel not in CHUNK_KERNELS:
            raise ValueError(f"unknown chunk kernel {kernel!r}; choose one of {CHUNK_KERNELS}")
        self.scale, self.kernel = scale, kernel
        self.extras = None  # the fused kernel's other outputs, fed back to its backward (no dropout)

    def forward(self, q, k, v):
        """(out, lse) over this chunk, in the accumulator dtype; lse is [B, H, S]."""
        acc = _accumulator_dtype(q.dtype)
        if self.kernel == "math":
            s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * self.scale
            lse = torch.logsumexp(s, dim=-1)
            return torch.matmul(torch.exp(s - lse[..., None]), v.to(acc)), lse
        if self.kernel == "cudnn":
            out, lse, cum_q, cum_k, _, _, seed, offset, _ = torch.ops.aten._scaled_dot_product_cudnn_attention(
                q, k, v, None, True, 0.0, False, False, scale=self.scale)
            self.extras = (cum_q, cum_k, seed, offset, lse.shape)  # cuDNN's lse is [B, H, S, 1]
        elif q.device.type == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False,
                                                                                 scale=self.scale)
        else:
            out, lse, cum_q, cum_k, _, _, rng_state, unused, _ = torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, v, 0.0, False, False, scale=self.scale)
            self.extras = (cum_q, cum_k, rng_state, unused)
        return out.to(acc), lse.reshape(q.shape[:3]).to(acc)

    def backward(self, d_out, q, k, v, out, lse):
        """(dq, dk, dv) of this chunk in the accumulator dtype; ``out``, ``lse`` are over all keys.
        ``d_out`` and ``out`` come in q's dtype, both contiguous: cuDNN's backward wants their
        strides to agree."""
        acc = lse.dtype
        if self.kernel == "math":
            qa, ka, va, d_out = q.to(acc), k.to(acc), v.to(acc), d_out.to(acc)
            p = torch.exp(torch.matmul(qa, ka.transpose(-1, -2)) * self.scale - lse[..., None])
            ds = p * (torch.matmul(d_out, va.transpose(-1, -2)) - (d_out * out.to(acc)).sum(-1, keepdim=True))
            return (torch.matmul(ds, ka) * self.scale, torch.matmul(ds.transpose(-1, -2), qa) * self.scale,
                    torch.matmul(p.transpose(-1, -2), d_out))
        if self.kernel == "cudnn":
            cum_q, cum_k, seed, offset, lse_shape = self.extras
            grads = torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
                d_out, q, k, v, out, lse.reshape(lse_shape), seed, offset, None, cum_q, cum_k,
                q.shape[2], k.shape[2], 0.0, False, scale=self.scale)
        elif q.device.type == "cpu":
            grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                d_out, q, k, v, out, lse, 0.0, False, scale=self.scale)
        else:
            cum_q, cum_k, rng_state, unused = self.extras
            grads = torch.ops.aten._scaled_dot_product_flash_attention_backward(
                d_out, q, k, v, out, lse, cum_q, cum_k, q.shape[2], k.shape[2], 0.0, False, rng_state, unused,
                scale=self.scale)
        return tuple(g.to(acc) for g in grads)


def _merge_pair(out, lse, out_i, lse_i):
    """Merge chunk i into the running (out, lse), in place: out_i's weight is sigmoid(lse_i - lse)."""
    if out is None:
        return out_i, lse_i
    out.sub_(torch.sigmoid(lse_i - lse)[..., None] * (out - out_i))
    lse.sub_(torch.nn.functional.logsigmoid(lse - lse_i))
    return out, lse


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, valid_len, group, kernel):
        ring = _RingExchange(group)
        chunk = _ChunkAttention(scale, kernel)
        kv, chunk_len = (k, v), k.shape[2]
        out = lse = None
        for step in range(ring.size):
            pending = ring.start(*kv) if step + 1 < ring.size else None
            n = valid_keys(chunk_len, ring.source(step), valid_len)
            if n:  # every rank meets chunk 0, which holds at least one real key
                out, lse = _merge_pair(out, lse, *chunk.forward(q, kv[0][:, :, :n], kv[1][:, :, :n]))
            if pending is not None:
                kv = ring.finish(pending)
        out = out.to(q.dtype).contiguous()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.chunk, ctx.valid_len, ctx.group = chunk, valid_len, group
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        d_out = d_out.to(q.dtype).contiguous()  # once, not per chunk (out was saved contiguous)
        ring = _RingExchange(ctx.group)
        dq = torch.zeros_like(q, dtype=lse.dtype)
        # keys and values travel with their gradient accumulators and are home after the last shift
        kv, grads = (k, v), (torch.zeros_like(k, dtype=lse.dtype), torch.zeros_like(v, dtype=lse.dtype))
        for step in range(ring.size):
            n = valid_keys(k.shape[2], ring.source(step), ctx.valid_len)
            if n:
                dq_i, dk_i, dv_i = ctx.chunk.backward(d_out, q, kv[0][:, :, :n], kv[1][:, :, :n], out, lse)
                dq += dq_i
                grads[0][:, :, :n] += dk_i
                grads[1][:, :, :n] += dv_i
            if step + 1 < ring.size:
                received = ring.finish(ring.start(*kv, *grads))
                kv, grads = tuple(received[:2]), tuple(received[2:])
            else:  # the last shift only brings the gradients home
                grads = tuple(ring.finish(ring.start(*grads)))
        return dq.to(q.dtype), grads[0].to(k.dtype), grads[1].to(v.dtype), None, None, None, None


def ring_attention(q, k, v, softmax_scale, valid_len, group, kernel=None):
    """Softmax attention of local queries over the keys of every rank of ``group`` ([B, H, S, D]).

    ``kernel``: what attends each chunk, one of ``CHUNK_KERNELS`` (default ``chunk_kernel(q)``).
    """
    return _RingAttention.apply(q, k, v, softmax_scale, valid_len, group, kernel or chunk_kernel(q))


@torch.no_grad()
def ring_attention_jvp(q, k, v, q_t, k_t, v_t, softmax_scale, valid_len, group):
    """(out, out_t) of ``ring_attention`` with tangents (q_t, k_t, v_t), through the JVP kernel."""
    ring = _RingExchange(group)
    travelling = torch.stack([k, v, k_t, v_t])
    chunk_len = k.shape[2]
    parts = []
    for step in range(ring.size):
        pending = ring.start(travelling) if step + 1 < ring.size else None
        n = valid_keys(chunk_len, ring.source(step), valid_len)
        if n:
            kc, vc, kc_t, vc_t = travelling[:, :, :, :n].unbind(0)
            parts.append(flash_attention_jvp(q, kc, vc, q_t, kc_t, vc_t, softmax_scale=softmax_scale))
        if pending is not None:
            (travelling,) = ring.finish(pending)
    out, out_t, _lse, _lse_t = merge_attention_jvp(parts)
    return out, out_t
