"""What every family's model shares: full tensors in and out, TP/SP/CP inside, forward and exact JVP.

``model(x, t, text)`` is the family's diffusers transformer output for latents x [B, C, T, H, W],
timesteps t [B] and text-encoder states [B, L, text_dim]; ``model.jvp(x, t, text, x_t, t_t)``
returns (output, its directional derivative) with no autograd, one pass: see
``megatron_rcm.models.tangent`` for how primal and tangent share every GEMM and collective.

Token layout: the patch grid (frames x height x width, row-major, as diffusers flattens it) is
padded to a multiple of CP x (TP if sequence parallel), split into one contiguous chunk per
context-parallel rank, and under sequence parallelism each chunk into one piece per TP rank.
The input split's backward all-gathers and the output gather's backward splits, so with the
same loss on every rank input gradients come out whole and parameter gradients are per-rank
partial sums in Megatron's convention (see ``models.layers``).

Every family's network is a rectified-flow velocity ``eps - x0`` at RF time sigma / (1 + sigma),
whose timestep input is that time times the family's ``TIMESTEP_SCALE`` (its denoiser
parametrisation: ``megatron_rcm.diffusion.denoiser`` maps it to TrigFlow).

A family subclasses ``VideoDiT`` and provides ``TIMESTEP_SCALE``, ``patch_embedding`` and ``blocks`` (modules),
``_condition`` (timestep and text -> the blocks' and the head's conditioning), ``_head`` (the
last norm and projection), ``_rope_thetas`` and ``parameter_table`` (its weight map, see
``models.weight_map``); its config gives ``max_patches``.
"""

import functools
import math

import torch
import torch.nn.functional as nn_functional
from megatron.core import parallel_state, tensor_parallel
from megatron.core.tensor_parallel.mappings import (
    gather_from_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
)
from megatron.core.transformer.module import MegatronModule
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from . import elementwise, weight_map
from .attention import SequenceLayout
from .tangent import compute_dtype, linear, stack, upcast


def _group_size(getter):
    return getter() if parallel_state.model_parallel_is_initialized() else 1


def rope_angles(grid, head_dim, thetas):
    """Per-token RoPE angles [N, head_dim/2] in float64: frame, height and width parts side by side,
    each with its own base ``thetas[axis]``."""
    h_dim = w_dim = 2 * (head_dim // 6)
    parts = []
    for axis, (size, dim, theta) in enumerate(zip(grid, (head_dim - h_dim - w_dim, h_dim, w_dim), thetas)):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        angles = torch.outer(torch.arange(size, dtype=torch.float64), freqs)
        shape = [1, 1, 1, dim // 2]
        shape[axis] = size
        parts.append(angles.view(shape).expand(*grid, dim // 2))
    return torch.cat(parts, dim=-1).reshape(math.prod(grid), head_dim // 2)


@functools.lru_cache(maxsize=8)
def _rope_table(grid, head_dim, thetas, padded_len, start, length, device, dtype):
    """(cos, sin) [length, 1, 1, head_dim/2] of padded positions start..start+length (padding: angle 0)."""
    angles = nn_functional.pad(rope_angles(grid, head_dim, thetas), (0, 0, 0, padded_len - math.prod(grid)))
    angles = angles[start:start + length].to(device)[:, None, None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


# Every fused attention op: SDPA's backends and FlashAttention-4 (their outputs are what the attention
# backward reads besides q, k, v). The math backend decomposes above the dispatcher into matmuls and
# a softmax, which a selective-checkpoint policy sees one by one: with it, attention is recomputed as before.
_ATTENTION_OPS = frozenset((torch.ops.megatron_rcm.fa4_forward.default,
                            torch.ops.aten._scaled_dot_product_flash_attention.default,
                            torch.ops.aten._scaled_dot_product_efficient_attention.default,
                            torch.ops.aten._scaled_dot_product_cudnn_attention.default,
                            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default))


def _keep_attention(_ctx, op, *_args, **_kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _checkpoint_keeping_attention(run, *args):
    """``run(*args)`` recomputed in the backward except its attention calls, whose outputs (and
    softmax statistics) are kept from the forward."""
    return checkpoint(run, *args, use_reentrant=False,
                      context_fn=functools.partial(create_selective_checkpoint_contexts, _keep_attention))


class VideoDiT(MegatronModule):
    PROJ_OUT_ORDER = "thw"
    """Order of the patch axes (frames, height, width) in ``proj_out``'s features, before the channels."""

    def __init__(self, config):
        super().__init__(config)
        tp = _group_size(parallel_state.get_tensor_model_parallel_world_size)
        cp = _group_size(parallel_state.get_context_parallel_world_size)
        if (tp, cp) != (config.tensor_model_parallel_size, config.context_parallel_size):
            raise ValueError(
                f"config asks for tensor-parallel {config.tensor_model_parallel_size} x context-parallel "
                f"{config.context_parallel_size} but the initialised groups are {tp} x {cp}"
            )

    # ---- public API -------------------------------------------------------------------------
    def forward(self, hidden_states, timestep, encoder_hidden_states):
        """Output [B, C_out, T, H, W] for latents [B, C, T, H, W], timesteps [B] and text [B, L, text_dim]."""
        return self._run(hidden_states, timestep, encoder_hidden_states, None, None)

    @torch.no_grad()
    def jvp(self, hidden_states, timestep, encoder_hidden_states, hidden_states_t, timestep_t):
        """(output, d output) along the tangent (hidden_states_t, timestep_t); the text is held fixed."""
        return self._jvp(hidden_states, timestep, encoder_hidden_states, hidden_states_t, timestep_t)

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """megatron-core distributed-checkpoint state: the same global tensors at every TP/CP size."""
        return weight_map.sharded_state_dict(self, prefix, sharded_offsets, metadata)

    # ---- internals ----------------------------------------------------------------------------
    def _jvp(self, x, t, text, x_t, t_t, extra_channels=None):
        if x_t.shape != x.shape or t_t.shape != t.shape:
            raise ValueError(
                f"tangent shapes {tuple(x_t.shape)}, {tuple(t_t.shape)} must equal the primal "
                f"shapes {tuple(x.shape)}, {tuple(t.shape)}"
            )
        return self._run(x, t, text, x_t, t_t, extra_channels).chunk(2, dim=0)

    def _check_inputs(self, x, t, text):
        config = self.config
        if x.dim() != 5 or x.shape[1] != config.in_channels:
            raise ValueError(f"hidden_states must be [B, {config.in_channels}, T, H, W], got {tuple(x.shape)}")
        batch = x.shape[0]
        if t.shape != (batch,):
            raise ValueError(f"timestep must have shape [{batch}], got {tuple(t.shape)}")
        if text.dim() != 3 or text.shape[0] != batch:
            raise ValueError(f"encoder_hidden_states must be [{batch}, L, {config.text_dim}], got {tuple(text.shape)}")
        if text.shape[2] != config.text_dim:
            raise ValueError(f"encoder_hidden_states has text dim {text.shape[2]}, the model expects {config.text_dim}")
        dims = zip(("frames", "height", "width"), x.shape[2:], config.patch_size, config.max_patches())
        for name, size, p, most in dims:
            if size % p:
                raise ValueError(f"latent {name} {size} is not divisible by the patch size {p} ({config.patch_size})")
            if size // p > most:
                raise ValueError(f"{size // p} patches along {name} exceed the model's {most} RoPE positions")

    def _patchify(self, x):
        """[B, C, T, H, W] -> [N, B, C*pt*ph*pw], channels ordered as diffusers' patch embedding flattens them."""
        b, channels, t, h, w = x.shape
        pt, ph, pw = self.config.patch_size
        x = x.reshape(b, channels, t // pt, pt, h // ph, ph, w // pw, pw).permute(2, 4, 6, 0, 1, 3, 5, 7)
        return x.reshape((t // pt) * (h // ph) * (w // pw), b, channels * pt * ph * pw)

    def _unpatchify(self, tokens, grid):
        """[N, B, (patch axes in PROJ_OUT_ORDER), C] -> [B, C, T, H, W]."""
        patch = dict(zip("thw", self.config.patch_size))
        f, h, w = grid
        b = tokens.shape[1]
        x = tokens.reshape(f, h, w, b, *(patch[a] for a in self.PROJ_OUT_ORDER), -1)
        axis = {a: 4 + i for i, a in enumerate(self.PROJ_OUT_ORDER)}
        x = x.permute(3, 7, 0, axis["t"], 1, axis["h"], 2, axis["w"])
        return x.reshape(b, -1, f * patch["t"], h * patch["h"], w * patch["w"])

    def _layout(self, valid_len):
        config = self.config
        shards = config.context_parallel_size * (config.tensor_model_parallel_size if config.sequence_parallel else 1)
        cp_group = parallel_state.get_context_parallel_group() if config.context_parallel_size > 1 else None
        cp_rank = parallel_state.get_context_parallel_rank() if config.context_parallel_size > 1 else 0
        return SequenceLayout.build(valid_len, shards, cp_group, config.context_parallel_size, cp_rank,
                                    config.cp_comm_type)

    def _shard(self, tokens, layout):
        tokens = nn_functional.pad(tokens, (0, 0, 0, 0, 0, layout.padded_len - layout.valid_len))
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
        return _rope_table(grid, self.config.head_dim, self._rope_thetas(), layout.padded_len,
                           layout.cp_rank * layout.chunk_len, layout.chunk_len, device, dtype)

    def _blocks(self, x, cond, rope, layout, tangent):
        """Every block on x; ``cond`` (a tuple of tensors) is passed to each one after x.

        Under full recompute, megatron-core's TransformerBlock methods: "uniform" checkpoints
        every chunk of ``recompute_num_layers`` blocks; "block" checkpoints each of the first
        ``recompute_num_layers`` blocks alone and keeps the activations of the others. With
        ``recompute_keep_attention`` the recomputed blocks keep their attention outputs.
        """
        config = self.config
        recomputed, chunk_size = 0, 1
        if config.recompute_granularity == "full" and torch.is_grad_enabled():
            recomputed, chunk_size = ((config.recompute_num_layers, 1) if config.recompute_method == "block"
                                      else (len(self.blocks), config.recompute_num_layers))
        for start in range(0, recomputed, chunk_size):
            chunk = self.blocks[start:min(start + chunk_size, recomputed)]

            def run(x, *cond, chunk=chunk):
                # megatron's reentrant checkpoint runs this without grad, then with grad in the
                # backward: both passes must compute alike
                with elementwise.without_gemm_epilogues():
                    for block in chunk:
                        x = block(x, *cond, rope, layout, False)
                return x

            if config.recompute_keep_attention:
                x = _checkpoint_keeping_attention(run, x, *cond)
            else:
                x = tensor_parallel.checkpoint(run, False, x, *cond)
        for block in self.blocks[recomputed:]:
            x = block(x, *cond, rope, layout, tangent)
        return x

    def _run(self, x, t, text, x_t, t_t, extra_channels=None):
        """``extra_channels`` [B, k, T, H, W] (no tangent) are appended to the latent channels."""
        self._check_inputs(x, t, text)
        tangent = x_t is not None
        grid = tuple(s // p for s, p in zip(x.shape[2:], self.config.patch_size))
        layout = self._layout(math.prod(grid))

        def latent_tokens(latents, extra):
            return self._patchify(latents if extra is None else torch.cat([latents, extra], dim=1))

        tokens = latent_tokens(x, extra_channels)
        time = t[None].to(compute_dtype(self.patch_embedding.weight.dtype))
        if tangent:
            extra_t = None if extra_channels is None else torch.zeros_like(extra_channels)
            tokens, time = stack(tokens, latent_tokens(x_t, extra_t)), stack(time, t_t[None].to(time.dtype))
        h = linear(self.patch_embedding, self._shard(tokens, layout), tangent)
        block_cond, head_cond = self._condition(time, text.transpose(0, 1).to(h.dtype), tangent)
        rope = self._rope(grid, layout, h.device, upcast(h).dtype)
        h = self._blocks(h, block_cond, rope, layout, tangent)
        return self._unpatchify(self._unshard(self._head(h, head_cond, tangent), layout), grid)
