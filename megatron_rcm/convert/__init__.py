"""Checkpoint formats: Wan native, diffusers, Megatron distributed checkpoints."""
