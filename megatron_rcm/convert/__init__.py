"""Checkpoint formats: Wan native, diffusers, Megatron distributed checkpoints, converted by streaming."""

from .api import FORMATS, ConversionRequestError, convert_checkpoint, open_checkpoint
from .verify import verify_conversion

__all__ = ["FORMATS", "ConversionRequestError", "convert_checkpoint", "open_checkpoint", "verify_conversion"]
