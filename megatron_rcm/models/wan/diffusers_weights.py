"""diffusers ``WanTransformer3DModel`` <-> this model: config and weights, sliced for any TP rank.

Only Wan2.1 text-to-video is supported (no image branch). Which diffusers tensor feeds which
parameter, and how it is split over TP ranks, is ``weight_map``'s table.
"""

from .. import weight_map
from ..weight_map import diffusers_state_dict, load_diffusers_weights, read_diffusers_folder
from .config import WanConfig
from .weight_map import wan_parameters

__all__ = ["config_from_diffusers", "convert_diffusers_state_dict", "diffusers_config", "diffusers_state_dict",
           "load_diffusers_weights", "read_diffusers_folder", "save_diffusers_folder"]

_T2V_ONLY = {"image_dim": None, "added_kv_proj_dim": None, "pos_embed_seq_len": None,
             "qk_norm": "rms_norm_across_heads"}


def config_from_diffusers(cfg: dict, **overrides) -> WanConfig:
    """A ``WanConfig`` from a diffusers ``config.json`` dict; ``overrides`` set parallel sizes, dtype, etc."""
    weight_map.refuse_unsupported(cfg, _T2V_ONLY, "Wan2.1 text-to-video")
    heads, head_dim = cfg.get("num_attention_heads", 40), cfg.get("attention_head_dim", 128)
    fields = dict(
        num_layers=cfg.get("num_layers", 40), hidden_size=heads * head_dim, num_attention_heads=heads,
        kv_channels=head_dim, ffn_hidden_size=cfg.get("ffn_dim", 13824), in_channels=cfg.get("in_channels", 16),
        out_channels=cfg.get("out_channels") or cfg.get("in_channels", 16),
        patch_size=tuple(cfg.get("patch_size", (1, 2, 2))), text_dim=cfg.get("text_dim", 4096),
        freq_dim=cfg.get("freq_dim", 256), cross_attn_norm=cfg.get("cross_attn_norm", True),
        layernorm_epsilon=cfg.get("eps", 1e-6), rope_max_seq_len=cfg.get("rope_max_seq_len", 1024),
    )
    return WanConfig.from_architecture(fields, **overrides)


def diffusers_config(config: WanConfig) -> dict:
    """The diffusers ``config.json`` dict of the model ``config`` describes (inverse of ``config_from_diffusers``)."""
    return {
        "_class_name": "WanTransformer3DModel", "patch_size": list(config.patch_size),
        "num_attention_heads": config.num_attention_heads, "attention_head_dim": config.kv_channels,
        "in_channels": config.in_channels, "out_channels": config.out_channels, "text_dim": config.text_dim,
        "freq_dim": config.freq_dim, "ffn_dim": config.ffn_hidden_size, "num_layers": config.num_layers,
        "cross_attn_norm": config.cross_attn_norm, "qk_norm": "rms_norm_across_heads", "eps": config.layernorm_epsilon,
        "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": config.rope_max_seq_len,
    }


def convert_diffusers_state_dict(state, config: WanConfig, tp_rank: int = 0) -> dict:
    """This TP rank's state dict of ``WanModel`` from a diffusers state dict; lists missing/unknown keys."""
    return weight_map.convert_state_dict(state, wan_parameters(config), config.tensor_model_parallel_size, tp_rank,
                                         "Wan2.1 T2V")


def save_diffusers_folder(model, folder, overwrite=True):
    """Write a TP=1 ``WanModel`` as a diffusers folder (config.json + safetensors), atomically."""
    weight_map.save_diffusers_folder(model, folder, diffusers_config(model.config), overwrite)
