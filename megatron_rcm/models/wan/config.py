"""Wan2.1 T2V DiT configuration: megatron-core's TransformerConfig plus the video/text fields, and presets."""

from dataclasses import dataclass

from ..config import DiTConfig


@dataclass
class WanConfig(DiTConfig):
    """Fields are diffusers' ``WanTransformer3DModel`` ones under Megatron names:
    hidden_size = heads x head dim, ffn_hidden_size = ffn_dim, layernorm_epsilon = eps.
    Parallelism, recompute, ``transformer_impl`` and ``fuse_elementwise``: see ``DiTConfig``.
    """

    FAMILY = "Wan"

    freq_dim: int = 256
    """Channels of the sinusoidal timestep embedding."""

    cross_attn_norm: bool = True
    """An affine LayerNorm before the cross-attention."""

    rope_max_seq_len: int = 1024
    """Most patches along each axis (diffusers' RoPE table length)."""

    rope_theta: float = 10000.0
    """RoPE base of every axis."""

    def max_patches(self) -> tuple:
        return (self.rope_max_seq_len,) * 3


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


WanConfig.PRESETS = PRESETS
WanConfig.ARCHITECTURE_FIELDS = (
    "num_layers", "hidden_size", "num_attention_heads", "kv_channels", "ffn_hidden_size", "in_channels",
    "out_channels", "patch_size", "text_dim", "freq_dim", "cross_attn_norm", "layernorm_epsilon", "rope_max_seq_len",
    "rope_theta")


def wan_config(name, **overrides) -> WanConfig:
    """A ``WanConfig`` from a preset name, with any field overridden."""
    return WanConfig.from_preset(name, **overrides)
