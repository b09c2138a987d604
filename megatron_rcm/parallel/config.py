"""Parallel sizes and their validation, before any process group exists."""

from dataclasses import dataclass


class ParallelSizeError(ValueError):
    """Parallel sizes that cannot be laid out on the world size (or on the model)."""


@dataclass(frozen=True)
class ParallelConfig:
    """Model-parallel sizes in Megatron's terms; data parallelism takes what is left.

    The rank order is Megatron's default "tp-cp-ep-dp-pp": tensor-parallel ranks are
    adjacent, then context-parallel, then data-parallel, then pipeline stages.
    """

    tensor_model_parallel_size: int = 1
    """Ranks that split each linear layer's weights (Megatron's TP); they hold the same tokens."""

    context_parallel_size: int = 1
    """Ranks that split one sample's tokens, exchanging keys and values in attention (CP)."""

    pipeline_model_parallel_size: int = 1
    """Pipeline stages. The models here have none (each rank builds every block), so the entry points
    keep it at 1; megatron-core's initialisation takes it with the other sizes."""

    sequence_parallel: bool = False
    """Split the activations outside attention and the linears over the TP ranks as well (needs TP > 1)."""

    def __post_init__(self):
        for name in ("tensor_model_parallel_size", "context_parallel_size", "pipeline_model_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ParallelSizeError(f"{name} must be a positive integer, got {value!r}")
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ParallelSizeError(
                "sequence_parallel needs tensor_model_parallel_size > 1; "
                "turn sequence parallelism off or raise the tensor-parallel size"
            )

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.context_parallel_size * self.pipeline_model_parallel_size

    def data_parallel_size(self, world_size: int) -> int:
        """The data-parallel size on `world_size` ranks; raises if the sizes do not divide it."""
        mp = self.model_parallel_size
        if world_size % mp != 0:
            raise ParallelSizeError(
                f"world size {world_size} is not divisible by tensor ({self.tensor_model_parallel_size}) x "
                f"context ({self.context_parallel_size}) x pipeline ({self.pipeline_model_parallel_size}) "
                f"= {mp}; change the parallel sizes so their product divides {world_size}, "
                f"or launch a multiple of {mp} processes"
            )
        return world_size // mp
