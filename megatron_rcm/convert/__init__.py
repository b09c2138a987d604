"""Checkpoint formats: Wan native, diffusers, Megatron distributed checkpoints, converted by streaming."""

from .api import FORMATS, ConversionRequestError, convert_checkpoint, detect_format, open_checkpoint

__all__ = ["FORMATS", "ConversionRequestError", "convert_checkpoint", "detect_format", "open_checkpoint",
           "verify_conversion"]


def __getattr__(name):
    # verify builds diffusers models (2 s of imports): loaded when asked for, not by every conversion
    if name == "verify_conversion":
        from .verify import verify_conversion

        return verify_conversion
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
