"""Cosmos-Predict2 text-to-image DiT configuration: ``DiTConfig`` plus Cosmos' fields, and presets."""

from dataclasses import dataclass

from ..config import DiTConfig


@dataclass
class CosmosConfig(DiTConfig):
    """Fields are diffusers' ``CosmosTransformer3DModel`` ones under Megatron names:
    hidden_size = heads x head dim, ffn_hidden_size = mlp_ratio x hidden_size,
    text_dim = text_embed_dim, layernorm_epsilon = the adaLN LayerNorms' and the timestep
    RMSNorm's eps. Parallelism, recompute, ``transformer_impl`` and ``fuse_elementwise``: see
    ``DiTConfig``. Only the Predict2 architecture is covered: no learnable positional embedding,
    text-projection, image-context or ControlNet branches.
    """

    FAMILY = "Cosmos"

    adaln_lora_dim: int = 256
    """Inner width of every low-rank adaLN modulation (two bias-free linears per norm)."""

    rope_scale: tuple = (1.0, 4.0, 4.0)
    """NTK scale of the RoPE base along (frames, height, width): base 10000 * scale^(d / (d - 2))."""

    max_size: tuple = (128, 240, 240)
    """Largest latent (frames, height, width); each axis has max(max_size / patch_size) RoPE positions."""

    concat_padding_mask: bool = True
    """The patch embedding sees one more input channel, the padding mask (all zero for text-to-image)."""

    qk_layernorm_epsilon: float = 1e-5
    """eps of the per-head q/k RMSNorms (diffusers' ``Attention`` default)."""

    def __post_init__(self):
        self.rope_scale, self.max_size = tuple(self.rope_scale), tuple(self.max_size)
        if len(self.rope_scale) != 3 or len(self.max_size) != 3:
            raise ValueError(f"rope_scale and max_size need three entries, got {self.rope_scale}, {self.max_size}")
        # megatron's finalize_model_grads sums the per-head q/k norm weights (q_layernorm, k_layernorm) over TP
        self.qk_layernorm = True
        super().__post_init__()
        if min(self.head_dim // 6 * 2, self.head_dim - 4 * (self.head_dim // 6)) <= 2:
            raise ValueError(f"head dim {self.head_dim} leaves a RoPE part of 2 channels or fewer "
                             "(its NTK exponent d / (d - 2) is undefined)")

    def max_patches(self) -> tuple:
        return (max(s // p for s, p in zip(self.max_size, self.patch_size)),) * 3


def _predict2(heads, layers):
    hidden = heads * 128
    return dict(num_attention_heads=heads, kv_channels=128, hidden_size=hidden, ffn_hidden_size=4 * hidden,
                num_layers=layers, in_channels=16, out_channels=16, patch_size=(1, 2, 2), text_dim=1024,
                adaln_lora_dim=256, rope_scale=(1.0, 4.0, 4.0), max_size=(128, 240, 240),
                concat_padding_mask=True, layernorm_epsilon=1e-6, qk_layernorm_epsilon=1e-5)


CosmosConfig.PRESETS = {
    # diffusers' nvidia/Cosmos-Predict2-{2B,14B}-Text2Image transformer configs
    "cosmos-predict2-2b": _predict2(heads=16, layers=28),
    "cosmos-predict2-14b": _predict2(heads=40, layers=36),
    # two different tiny shapes for CPU tests (the attention kernel supports head dims 16..128)
    "cosmos-tiny-a": dict(hidden_size=64, num_attention_heads=2, kv_channels=32, ffn_hidden_size=96, num_layers=2,
                          in_channels=4, out_channels=4, patch_size=(1, 2, 2), text_dim=24, adaln_lora_dim=8,
                          rope_scale=(1.0, 4.0, 4.0), max_size=(8, 16, 16), concat_padding_mask=True,
                          layernorm_epsilon=1e-6, qk_layernorm_epsilon=1e-5),
    "cosmos-tiny-b": dict(hidden_size=64, num_attention_heads=4, kv_channels=16, ffn_hidden_size=80, num_layers=3,
                          in_channels=3, out_channels=5, patch_size=(2, 1, 1), text_dim=20, adaln_lora_dim=6,
                          rope_scale=(2.0, 1.0, 3.0), max_size=(8, 12, 12), concat_padding_mask=False,
                          layernorm_epsilon=1e-6, qk_layernorm_epsilon=1e-5),
}
CosmosConfig.ARCHITECTURE_FIELDS = (
    "num_layers", "hidden_size", "num_attention_heads", "kv_channels", "ffn_hidden_size", "in_channels",
    "out_channels", "patch_size", "text_dim", "adaln_lora_dim", "rope_scale", "max_size", "concat_padding_mask",
    "layernorm_epsilon", "qk_layernorm_epsilon")


def cosmos_config(name, **overrides) -> CosmosConfig:
    """A ``CosmosConfig`` from a preset name, with any field overridden."""
    return CosmosConfig.from_preset(name, **overrides)
