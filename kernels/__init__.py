"""Triton attention kernels (forward + JVP), imported as megatron_rcm.kernels."""
from .flash_jvp import AttentionJVPOutput, flash_attention_jvp

__all__ = ["AttentionJVPOutput", "flash_attention_jvp"]
