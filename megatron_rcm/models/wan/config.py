"""Wan2.1 T2V DiT configuration: megatron-core's TransformerConfig plus the video/text fields, and presets."""

from dataclasses import dataclass

import torch

from megatron.core.transformer import TransformerConfig

from ..attention import CP_MODES

LINEAR_IMPLS = ("local", "transformer_engine")


@dataclass
class WanConfig(TransformerConfig):
    """Fields are diffusers' ``WanTransformer3DModel`` ones under Megatron names:
    hidden_size = heads x head dim, ffn_hidden_size = ffn_dim, layernorm_epsilon = eps.

    Parallelism: ``tensor_model_parallel_size``, ``sequence_parallel`` and
    ``context_parallel_size`` (Megatron's); ``cp_comm_type`` picks "a2a" (Ulysses all-to-all,
    needs heads divisible by TP x CP) or "p2p" (ring, any head count).
    ``recompute_granularity="full"`` with ``recompute_method="uniform"`` recomputes every
    ``recompute_num_layers`` blocks in the backward. ``transformer_impl`` picks megatron-core's
    local parallel linears (default) or Transformer Engine's where it is installed.
    ``fuse_elementwise`` compiles each elementwise piece (norms, modulation, GELU, residuals,
    RoPE, with the preceding bias) into one kernel with ``torch.compile`` on CUDA.
    """

    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple = (1, 2, 2)
    text_dim: int = 4096
    freq_dim: int = 256
    cross_attn_norm: bool = True
    rope_max_seq_len: int = 1024
    rope_theta: float = 10000.0
    transformer_impl: str = "local"
    fuse_elementwise: bool = True

    def __post_init__(self):
        if self.num_attention_heads % self.tensor_model_parallel_size != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not divisible by the tensor-parallel "
                f"size ({self.tensor_model_parallel_size}); pick a tensor-parallel size that divides it"
            )
        if self.cp_comm_type is None:
            self.cp_comm_type = "a2a"
        if self.cp_comm_type not in CP_MODES:
            raise ValueError(f"cp_comm_type must be one of {CP_MODES} ('p2p' = ring), got {self.cp_comm_type!r}")
        heads_per_tp_rank = self.num_attention_heads // self.tensor_model_parallel_size
        if self.cp_comm_type == "a2a" and heads_per_tp_rank % self.context_parallel_size != 0:
            raise ValueError(
                f"all-to-all context parallelism needs the heads per tensor-parallel rank ({heads_per_tp_rank}) "
                f"divisible by the context-parallel size ({self.context_parallel_size}); "
                f"use cp_comm_type='p2p' (ring) or change the sizes"
            )
        if self.transformer_impl not in LINEAR_IMPLS:
            raise ValueError(f"transformer_impl must be one of {LINEAR_IMPLS}, got {self.transformer_impl!r}")
        self.patch_size = tuple(self.patch_size)
        if len(self.patch_size) != 3 or any(p < 1 for p in self.patch_size):
            raise ValueError(f"patch_size must be three positive integers, got {self.patch_size}")
        if self.recompute_granularity not in (None, "full") or self.recompute_method not in (None, "uniform"):
            raise ValueError("the Wan model supports recompute_granularity='full' with recompute_method='uniform'")
        super().__post_init__()
        if self.hidden_size != self.num_attention_heads * self.kv_channels:
            raise ValueError(f"hidden_size ({self.hidden_size}) must equal heads x head dim "
                             f"({self.num_attention_heads} x {self.kv_channels})")
        head_dim = self.kv_channels
        if head_dim % 2 or (head_dim - 4 * (head_dim // 6)) % 2:
            raise ValueError(f"head dim {head_dim} cannot be split into even frame/height/width RoPE parts")

    @property
    def head_dim(self):
        return self.kv_channels


_WAN = dict(in_channels=16, out_channels=16, patch_size=(1, 2, 2), text_dim=4096, freq_dim=256,
            layernorm_epsilon=1e-6, kv_channels=128)

PRESETS = {
    "wan2.1-t2v-1.3b": dict(_WAN, hidden_size=1536, ffn_hidden_size=8960, num_attention_heads=12, num_layers=30),
    "wan2.1-t2v-14b": dict(_WAN, hidden_size=5120, ffn_hidden_size=13824, num_attention_heads=40, num_layers=40),
    # two different tiny shapes for CPU tests (the attention kernel supports head dims 16..128)
    "tiny-a": dict(hidden_size=64, num_attention_heads=2, kv_channels=32, ffn_hidden_size=96, num_layers=2,
                   in_channels=4, out_channels=4, patch_size=(1, 2, 2), text_dim=24, freq_dim=16,
                   layernorm_epsilon=1e-6, cross_attn_norm=True),
    "tiny-b": dict(hidden_size=64, num_attention_heads=4, kv_channels=16, ffn_hidden_size=80, num_layers=3,
                   in_channels=3, out_channels=5, patch_size=(2, 1, 1), text_dim=20, freq_dim=10,
                   layernorm_epsilon=1e-5, cross_attn_norm=False),
}


ARCHITECTURE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "kv_channels", "ffn_hidden_size",
                       "in_channels", "out_channels", "patch_size", "text_dim", "freq_dim", "cross_attn_norm",
                       "layernorm_epsilon", "rope_max_seq_len", "rope_theta")


def architecture(config: WanConfig) -> dict:
    """The fields that define the weights and the math (not parallelism, dtype or recompute), JSON-ready."""
    fields = {name: getattr(config, name) for name in ARCHITECTURE_FIELDS}
    fields["patch_size"] = list(fields["patch_size"])
    return fields


def config_from_architecture(fields: dict, **overrides) -> WanConfig:
    """A ``WanConfig`` from ``architecture()`` fields; ``overrides`` set parallel sizes, dtype, etc."""
    unknown = set(fields) - set(ARCHITECTURE_FIELDS)
    if unknown:
        raise ValueError(f"unknown Wan architecture fields {sorted(unknown)}")
    return WanConfig(**{"use_cpu_initialization": not torch.cuda.is_available(), **fields, **overrides})


def wan_config(name, **overrides):
    """A ``WanConfig`` from a preset name, with any field overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown Wan preset {name!r}; known: {sorted(PRESETS)}")
    return WanConfig(**{**PRESETS[name], **overrides})
