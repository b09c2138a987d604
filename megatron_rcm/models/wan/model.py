"""The Wan2.1 T2V DiT on megatron-core: full tensors in and out, TP/SP/CP inside, forward and exact JVP.

``model(x, t, text)`` is diffusers' ``WanTransformer3DModel(x, t, text).sample`` (velocity);
``model.jvp(x, t, text, x_t, t_t)`` returns (velocity, its directional derivative) with no
autograd, one pass: see ``megatron_rcm.models.tangent`` for how primal and tangent share every
GEMM and collective.

Token layout: the patch grid (frames x height x width, row-major, as diffusers flattens it) is
padded to a multiple of CP x (TP if sequence parallel), split into one contiguous chunk per
context-parallel rank, and under sequence parallelism each chunk into one piece per TP rank.
The input split's backward all-gathers and the output gather's backward splits, so with the
same loss on every rank input gradients come out whole and parameter gradients are per-rank
partial sums in Megatron's convention (see ``layers``).
"""

import functools
import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.tensor_parallel.mappings import (
    gather_from_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
)
from megatron.core.transformer.module import MegatronModule

from ..attention import SequenceLayout
from ..tangent import compute_dtype, linear, pointwise, stack, upcast
from .. import elementwise
from . import weight_map
from .config import WanConfig
from .layers import ConditionEmbedder, WanBlock, param_device, replicated_linear


def _group_size(getter):
    return getter() if parallel_state.model_parallel_is_initialized() else 1


def rope_angles(grid, head_dim, theta):
    """Per-token RoPE angles [N, head_dim/2] in float64: frame, height and width parts side by side."""
    h_dim = w_dim = 2 * (head_dim // 6)
    parts = []
    for axis, (size, dim) in enumerate(zip(grid, (head_dim - h_dim - w_dim, h_dim, w_dim))):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        angles = torch.outer(torch.arange(size, dtype=torch.float64), freqs)
        shape = [1, 1, 1, dim // 2]
        shape[axis] = size
        parts.append(angles.view(shape).expand(*grid, dim // 2))
    return torch.cat(parts, dim=-1).reshape(math.prod(grid), head_dim // 2)


@functools.lru_cache(maxsize=8)
def _rope_table(grid, head_dim, theta, padded_len, start, length, device, dtype):
    """(cos, sin) [length, 1, 1, head_dim/2] of padded positions start..start+length (padding: angle 0)."""
    angles = F.pad(rope_angles(grid, head_dim, theta), (0, 0, 0, padded_len - math.prod(grid)))
    angles = angles[start:start + length].to(device)[:, None, None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


class WanModel(MegatronModule):
    def __init__(self, config: WanConfig):
        super().__init__(config)
        tp = _group_size(parallel_state.get_tensor_model_parallel_world_size)
        cp = _group_size(parallel_state.get_context_parallel_world_size)
        if (tp, cp) != (config.tensor_model_parallel_size, config.context_parallel_size):
            raise ValueError(
                f"config asks for tensor-parallel {config.tensor_model_parallel_size} x context-parallel "
                f"{config.context_parallel_size} but the initialised groups are {tp} x {cp}"
            )
        dim, patch_volume = config.hidden_size, math.prod(config.patch_size)
        sp = config.sequence_parallel
        self.patch_embedding = replicated_linear(config, config.in_channels * patch_volume, dim, sp)
        self.condition_embedder = ConditionEmbedder(config)
        self.blocks = torch.nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.scale_shift_table = torch.nn.Parameter(
            torch.randn(1, 2, dim, device=param_device(config), dtype=config.params_dtype) / dim**0.5)
        self.scale_shift_table.sequence_parallel = sp
        self.proj_out = replicated_linear(config, dim, config.out_channels * patch_volume, sp)

    # ---- public API -------------------------------------------------------------------------
    def forward(self, hidden_states, timestep, encoder_hidden_states):
        """Velocity [B, C_out, T, H, W] for latents [B, C, T, H, W], timesteps [B] and text [B, L, text_dim]."""
        return self._run(hidden_states, timestep, encoder_hidden_states, None, None)

    @torch.no_grad()
    def jvp(self, hidden_states, timestep, encoder_hidden_states, hidden_states_t, timestep_t):
        """(velocity, d velocity) along the tangent (hidden_states_t, timestep_t); the text is held fixed."""
        if hidden_states_t.shape != hidden_states.shape or timestep_t.shape != timestep.shape:
            raise ValueError(
                f"tangent shapes {tuple(hidden_states_t.shape)}, {tuple(timestep_t.shape)} must equal the primal "
                f"shapes {tuple(hidden_states.shape)}, {tuple(timestep.shape)}"
            )
        out = self._run(hidden_states, timestep, encoder_hidden_states, hidden_states_t, timestep_t)
        return out.chunk(2, dim=0)

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """megatron-core distributed-checkpoint state: the same global tensors at every TP/CP size."""
        return weight_map.sharded_state_dict(self, prefix, sharded_offsets, metadata)

    # ---- internals ----------------------------------------------------------------------------
    def _check_inputs(self, x, t, text):
        c = self.config
        if x.dim() != 5 or x.shape[1] != c.in_channels:
            raise ValueError(f"hidden_states must be [B, {c.in_channels}, T, H, W], got {tuple(x.shape)}")
        batch = x.shape[0]
        if t.shape != (batch,):
            raise ValueError(f"timestep must have shape [{batch}], got {tuple(t.shape)}")
        if text.dim() != 3 or text.shape[0] != batch:
            raise ValueError(f"encoder_hidden_states must be [{batch}, L, {c.text_dim}], got {tuple(text.shape)}")
        if text.shape[2] != c.text_dim:
            raise ValueError(f"encoder_hidden_states has text dim {text.shape[2]}, the model expects {c.text_dim}")
        for name, size, p in zip(("frames", "height", "width"), x.shape[2:], c.patch_size):
            if size % p:
                raise ValueError(f"latent {name} {size} is not divisible by the patch size {p} ({c.patch_size})")
            if size // p > c.rope_max_seq_len:
                raise ValueError(f"{size // p} patches along {name} exceed rope_max_seq_len {c.rope_max_seq_len}")

    def _patchify(self, x):
        """[B, C, T, H, W] -> [N, B, C*pt*ph*pw], channels ordered as the Conv3d weight flattens."""
        b, c, t, h, w = x.shape
        pt, ph, pw = self.config.patch_size
        x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw).permute(2, 4, 6, 0, 1, 3, 5, 7)
        return x.reshape((t // pt) * (h // ph) * (w // pw), b, c * pt * ph * pw)

    def _unpatchify(self, tokens, grid):
        """[N, B, pt*ph*pw*C] (diffusers' proj_out order) -> [B, C, T, H, W]."""
        pt, ph, pw = self.config.patch_size
        f, h, w = grid
        b = tokens.shape[1]
        x = tokens.reshape(f, h, w, b, pt, ph, pw, -1).permute(3, 7, 0, 4, 1, 5, 2, 6)
        return x.reshape(b, -1, f * pt, h * ph, w * pw)

    def _layout(self, valid_len):
        c = self.config
        shards = c.context_parallel_size * (c.tensor_model_parallel_size if c.sequence_parallel else 1)
        cp_group = parallel_state.get_context_parallel_group() if c.context_parallel_size > 1 else None
        cp_rank = parallel_state.get_context_parallel_rank() if c.context_parallel_size > 1 else 0
        return SequenceLayout.build(valid_len, shards, cp_group, c.context_parallel_size, cp_rank, c.cp_comm_type)

    def _shard(self, tokens, layout):
        tokens = F.pad(tokens, (0, 0, 0, 0, 0, layout.padded_len - layout.valid_len))
        if layout.cp_size > 1:
            tokens = scatter_to_sequence_parallel_region(tokens, group=layout.cp_group)
        if self.config.sequence_parallel:
            tokens = scatter_to_sequence_parallel_region(tokens)
        return tokens

    def _unshard(self, tokens, layout):
        if self.config.sequence_parallel:
            tokens = gather_from_sequence_parallel_region(tokens, tensor_parallel_output_grad=False)
        if layout.cp_size > 1:
            tokens = gather_from_sequence_parallel_region(tokens, False, group=layout.cp_group)
        return tokens[: layout.valid_len]

    def _rope(self, grid, layout, device, dtype):
        c = self.config
        return _rope_table(grid, c.head_dim, c.rope_theta, layout.padded_len, layout.cp_rank * layout.chunk_len,
                           layout.chunk_len, device, dtype)

    def _blocks(self, x, context, modulation, rope, layout, tangent):
        c = self.config
        if c.recompute_granularity != "full" or not torch.is_grad_enabled():
            for block in self.blocks:
                x = block(x, context, modulation, rope, layout, tangent)
            return x
        for start in range(0, len(self.blocks), c.recompute_num_layers):
            chunk = self.blocks[start:start + c.recompute_num_layers]

            def run(x, context, modulation, chunk=chunk):
                for block in chunk:
                    x = block(x, context, modulation, rope, layout, False)
                return x

            x = tensor_parallel.checkpoint(run, False, x, context, modulation)
        return x

    def _run(self, x, t, text, x_t, t_t):
        self._check_inputs(x, t, text)
        tangent = x_t is not None
        c = self.config
        grid = tuple(s // p for s, p in zip(x.shape[2:], c.patch_size))
        layout = self._layout(math.prod(grid))

        tokens = self._patchify(x)
        time = t[None].to(compute_dtype(self.scale_shift_table.dtype))
        if tangent:
            tokens, time = stack(tokens, self._patchify(x_t)), stack(time, t_t[None].to(time.dtype))
        h = linear(self.patch_embedding, self._shard(tokens, layout), tangent)
        temb, modulation = self.condition_embedder.time(time, tangent)
        context = self.condition_embedder.text(text.transpose(0, 1).to(h.dtype))
        rope = self._rope(grid, layout, h.device, upcast(h).dtype)

        h = self._blocks(h, context, modulation, rope, layout, tangent)

        table = self.scale_shift_table
        shift, scale = pointwise(lambda e: table + e.unsqueeze(2), temb, tangent=tangent).unbind(2)
        h = elementwise.modulate(h, shift, scale, c.layernorm_epsilon, tangent=tangent, compiled=c.fuse_elementwise)
        out = self._unshard(linear(self.proj_out, h, tangent), layout)
        return self._unpatchify(out, grid)
