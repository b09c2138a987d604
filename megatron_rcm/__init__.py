"""megatron_rcm: rCM distillation of video diffusion transformers on Megatron-core."""

__version__ = "0.1.0"
