"""Attention over video tokens split across the context-parallel group, in forward or tangent mode.

Inputs and outputs are per-head, sequence-first: [S, B, H, D] (B stacked with the tangent in
tangent mode, see ``megatron_rcm.models.tangent``). ``SequenceLayout`` says how the video
tokens are laid out: padded to a multiple of the shard count, one contiguous chunk per
context-parallel rank. Self-attention then runs one of
  * ``a2a`` (Ulysses): one all-to-all swaps the sequence split for a head split, attention runs
    over the whole sequence on H/CP heads, one all-to-all swaps back;
  * ``p2p`` (ring): key/value chunks travel around the group (``megatron_rcm.parallel.ring_attention``).
Padded keys are masked in both. Cross-attention to the text needs no communication.
"""

from dataclasses import dataclass

import torch
from megatron.core.tensor_parallel.mappings import all_to_all

from megatron_rcm.kernels import attention, flash_attention_jvp
from megatron_rcm.parallel.ring_attention import chunk_key_mask, ring_attention, ring_attention_jvp

CP_MODES = ("a2a", "p2p")


@dataclass(frozen=True)
class SequenceLayout:
    """Video tokens: ``valid_len`` real tokens padded to ``padded_len``, split over ``shards`` ranks."""

    valid_len: int
    """Real video tokens of one sample."""

    padded_len: int
    """``valid_len`` rounded up to a multiple of the shard count; the padding is masked as keys."""

    cp_group: object
    """The context-parallel process group (None without CP)."""

    cp_size: int
    """Context-parallel ranks the tokens are split over."""

    cp_rank: int
    """This rank's place in ``cp_group``: which slice of the tokens it holds."""

    cp_mode: str
    """How attention sees the other ranks' tokens: one of ``CP_MODES``."""

    @classmethod
    def build(cls, valid_len, shards, cp_group, cp_size, cp_rank, cp_mode):
        if cp_mode not in CP_MODES:
            raise ValueError(f"context-parallel mode must be one of {CP_MODES}, got {cp_mode!r}")
        padded = -(-valid_len // shards) * shards
        return cls(valid_len, padded, cp_group, cp_size, cp_rank, cp_mode)

    @property
    def chunk_len(self):
        """Tokens per context-parallel rank."""
        return self.padded_len // self.cp_size


def _bhsd(x):
    # a strided view: SDPA and the JVP kernel need only the head dim contiguous
    return x.permute(1, 2, 0, 3)


def _sbhd(x):
    return x.permute(2, 0, 1, 3)


def _attend(q, k, v, tangent, scale, mask):
    """Attention of [B, H, S, D] tensors, returned as [S, B, H, D]. In tangent mode q is stacked on
    the batch dim, and so are k and v unless they are shared constants (text keys/values, which
    have no tangent)."""
    if not tangent:
        return _sbhd(attention(q, k, v, softmax_scale=scale, key_padding_mask=mask))
    qp, qt = q.chunk(2, dim=0)
    if k.shape[0] == q.shape[0]:
        (kp, kt), (vp, vt) = k.chunk(2, dim=0), v.chunk(2, dim=0)
    else:
        kp, vp, kt, vt = k, v, None, None
    out, out_t, _lse, _lse_t = flash_attention_jvp(qp, kp, vp, qt, kt, vt, softmax_scale=scale,
                                                   key_padding_mask=mask)
    # the kernel stores its outputs in q's [S, B, H, D] order: one copy stacks them
    return torch.cat([_sbhd(out), _sbhd(out_t)], dim=1)


def _sequence_to_heads(x, layout):
    """[S_chunk, B, n, H, D] on each rank -> [S_padded, B, n, H/CP, D] (all-to-all over the CP group)."""
    cp = layout.cp_size
    s, b, n, h, d = x.shape
    x = x.reshape(s, b, n, cp, h // cp, d).permute(3, 0, 1, 2, 4, 5).reshape(cp * s, b, n, h // cp, d)
    return all_to_all(layout.cp_group, x)


def _heads_to_sequence(x, layout):
    """Inverse of ``_sequence_to_heads`` for one tensor: [S_padded, B, H/CP, D] -> [S_chunk, B, H, D]."""
    cp = layout.cp_size
    n_tokens, b, hh, d = x.shape
    x = all_to_all(layout.cp_group, x.contiguous())
    return x.reshape(cp, n_tokens // cp, b, hh, d).permute(1, 2, 0, 3, 4).reshape(n_tokens // cp, b, cp * hh, d)


def self_attention(q, k, v, layout, tangent, scale):
    """Self-attention of the local chunk [S_chunk, B, H, D] over the whole (padded) video sequence."""
    batch = q.shape[1] // (2 if tangent else 1)
    if layout.cp_size == 1 or layout.cp_mode == "a2a":
        if layout.cp_size > 1:
            q, k, v = _sequence_to_heads(torch.stack([q, k, v], dim=2), layout).unbind(2)
        mask = chunk_key_mask(batch, layout.padded_len, 0, layout.valid_len, q.device)
        out = _attend(_bhsd(q), _bhsd(k), _bhsd(v), tangent, scale, mask)
        return _heads_to_sequence(out, layout) if layout.cp_size > 1 else out
    q, k, v = _bhsd(q), _bhsd(k), _bhsd(v)
    if not tangent:
        return _sbhd(ring_attention(q, k, v, scale, layout.valid_len, layout.cp_group))
    (qp, qt), (kp, kt), (vp, vt) = (x.chunk(2, dim=0) for x in (q, k, v))
    out, out_t = ring_attention_jvp(qp, kp, vp, qt, kt, vt, scale, layout.valid_len, layout.cp_group)
    return _sbhd(torch.cat([out, out_t], dim=0))


def cross_attention(q, k, v, tangent, scale):
    """Queries [S, B, H, D] (stacked in tangent mode) over text keys/values [L, B, H, D] (no tangent)."""
    return _attend(_bhsd(q), _bhsd(k), _bhsd(v), tangent, scale, None)
