"""Ring attention over the context-parallel group: exact forward, backward and JVP.

Each rank holds one contiguous chunk of the (padded) sequence: its queries, keys and values,
layout [B, H, S_chunk, D]. Key/value chunks travel around the ring (rank r sends to r+1 and
receives from r-1), so after ``cp`` steps every query chunk has met every key chunk. Padded
keys (global position >= ``valid_len``) are masked; each rank derives the mask of the chunk it
holds from the chunk's index, so masks never travel.

* ``ring_attention`` (autograd): the forward merges per-chunk (O_i, LSE_i) online and keeps
  the global O and LSE; the backward runs the ring again with the saved global LSE, so every
  chunk recomputes its exact probabilities P = exp(S - LSE) and
  dS = P * (dP - rowsum(dO * O)); the key/value gradients travel with their chunk and arrive
  home after the last step. Per-chunk work is plain torch math in the float32/float64
  accumulator (correct everywhere, not fast: it materialises a [B, H, S_chunk, S_chunk] score
  block per step).
* ``ring_attention_jvp`` (no autograd): primal and tangent chunks travel together in one
  message; each chunk goes through ``flash_attention_jvp`` and the parts are merged exactly by
  ``merge_attention_jvp`` (rcm-math section 8).
"""

import torch
import torch.distributed as dist

from megatron_rcm.kernels import flash_attention_jvp, merge_attention_jvp


class _RingExchange:
    """Send a tensor to the next rank of ``group`` and receive the previous rank's, asynchronously."""

    def __init__(self, group):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.size)
        self.prev = dist.get_global_rank(group, (self.rank - 1) % self.size)

    def start(self, tensor):
        tensor = tensor.contiguous()
        received = torch.empty_like(tensor)
        ops = [dist.P2POp(dist.isend, tensor, self.next, self.group),
               dist.P2POp(dist.irecv, received, self.prev, self.group)]
        requests = dist.batch_isend_irecv(ops)
        return requests, received, tensor

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
    positions = chunk_index * chunk_len + torch.arange(chunk_len, device=device)
    if int(positions[-1]) < valid_len:
        return None
    return (positions < valid_len).expand(batch, chunk_len).contiguous()


def _accumulator_dtype(dtype):
    return torch.promote_types(dtype, torch.float32)


def _chunk_scores(q, k, scale, mask):
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    return s


def _chunk_forward(q, k, v, scale, mask):
    s = _chunk_scores(q, k, scale, mask)
    lse = torch.logsumexp(s, dim=-1)
    # a fully padded chunk has LSE = -inf: it then contributes zero output and zero weight
    p = torch.exp(s - lse.nan_to_num(neginf=0.0)[..., None])
    return torch.matmul(p, v), lse


def _merge_pair(out, lse, out_i, lse_i):
    if out is None:
        return out_i, lse_i
    merged = torch.logaddexp(lse, lse_i)
    w = torch.exp(lse - merged).nan_to_num(nan=0.0)[..., None]
    w_i = torch.exp(lse_i - merged).nan_to_num(nan=0.0)[..., None]
    return out * w + out_i * w_i, merged


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, valid_len, group):
        ring = _RingExchange(group)
        acc = _accumulator_dtype(q.dtype)
        qa = q.to(acc)
        kv = torch.stack([k, v]).to(acc)
        batch, chunk = q.shape[0], k.shape[2]
        out = lse = None
        for step in range(ring.size):
            pending = ring.start(kv) if step + 1 < ring.size else None
            mask = chunk_key_mask(batch, chunk, ring.source(step), valid_len, q.device)
            out, lse = _merge_pair(out, lse, *_chunk_forward(qa, kv[0], kv[1], scale, mask))
            if pending is not None:
                kv = ring.finish(pending)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.valid_len, ctx.group = scale, valid_len, group
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        ring = _RingExchange(ctx.group)
        acc = out.dtype
        qa, d_out = q.to(acc), d_out.to(acc)
        delta = (d_out * out).sum(-1, keepdim=True)
        dq = torch.zeros_like(qa)
        # key, value and their gradient accumulators travel together and are home after the last shift
        travelling = torch.stack([k.to(acc), v.to(acc), torch.zeros_like(k, dtype=acc), torch.zeros_like(v, dtype=acc)])
        batch, chunk = q.shape[0], k.shape[2]
        for step in range(ring.size):
            kc, vc, dk, dv = travelling.unbind(0)
            mask = chunk_key_mask(batch, chunk, ring.source(step), ctx.valid_len, q.device)
            p = torch.exp(_chunk_scores(qa, kc, ctx.scale, mask) - lse[..., None])
            dv += torch.matmul(p.transpose(-1, -2), d_out)
            ds = p * (torch.matmul(d_out, vc.transpose(-1, -2)) - delta)
            dq += torch.matmul(ds, kc) * ctx.scale
            dk += torch.matmul(ds.transpose(-1, -2), qa) * ctx.scale
            travelling = ring.finish(ring.start(travelling))
        _, _, dk, dv = travelling.unbind(0)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def ring_attention(q, k, v, softmax_scale, valid_len, group):
    """Softmax attention of local queries over the keys of every rank of ``group`` ([B, H, S, D])."""
    return _RingAttention.apply(q, k, v, softmax_scale, valid_len, group)


@torch.no_grad()
def ring_attention_jvp(q, k, v, q_t, k_t, v_t, softmax_scale, valid_len, group):
    """(out, out_t) of ``ring_attention`` with tangents (q_t, k_t, v_t), through the JVP kernel."""
    ring = _RingExchange(group)
    travelling = torch.stack([k, v, k_t, v_t])
    batch, chunk = q.shape[0], k.shape[2]
    parts = []
    for step in range(ring.size):
        pending = ring.start(travelling) if step + 1 < ring.size else None
        kc, vc, kc_t, vc_t = travelling.unbind(0)
        mask = chunk_key_mask(batch, chunk, ring.source(step), valid_len, q.device)
        parts.append(flash_attention_jvp(q, kc, vc, q_t, kc_t, vc_t, softmax_scale=softmax_scale,
                                         key_padding_mask=mask))
        if pending is not None:
            travelling = ring.finish(pending)
    out, out_t, _lse, _lse_t = merge_attention_jvp(parts)
    return out, out_t
