"""Triton kernels: attention forward + JVP (this face), and the GELU backward (``kernels.gelu``); plain
attention on FlashAttention-4 where it is installed (``kernels.fa4``)."""

from .attention import attention
from .flash_jvp import AttentionJVPOutput, flash_attention_jvp
from .merge import merge_attention_jvp

__all__ = ["AttentionJVPOutput", "attention", "flash_attention_jvp", "merge_attention_jvp"]
