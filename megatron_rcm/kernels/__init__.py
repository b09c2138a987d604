"""Triton attention kernels (forward + JVP)."""

from .attention import attention
from .flash_jvp import AttentionJVPOutput, flash_attention_jvp
from .merge import merge_attention_jvp

__all__ = ["AttentionJVPOutput", "attention", "flash_attention_jvp", "merge_attention_jvp"]
