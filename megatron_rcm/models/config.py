"""What every model family's config shares: megatron-core's ``TransformerConfig`` plus a latent DiT's fields."""

from dataclasses import dataclass
from typing import ClassVar

import torch
from megatron.core.transformer import TransformerConfig

from .attention import CP_MODES

LINEAR_IMPLS = ("local", "transformer_engine")


@dataclass
class DiTConfig(TransformerConfig):
    """megatron-core's ``TransformerConfig`` (hidden_size = heads x head dim, ffn_hidden_size,
    layernorm_epsilon, parallel sizes, recompute, params_dtype) plus the fields of a latent
    text-to-video/image DiT. A family subclasses it with its own fields, ``FAMILY``, ``PRESETS``
    and ``ARCHITECTURE_FIELDS``.

    Parallelism: ``tensor_model_parallel_size``, ``sequence_parallel`` and
    ``context_parallel_size`` (Megatron's); ``cp_comm_type`` picks "a2a" (Ulysses all-to-all,
    needs heads divisible by TP x CP) or "p2p" (ring, any head count).
    ``recompute_granularity="full"`` with ``recompute_method="uniform"`` recomputes all blocks in
    the backward, in chunks of ``recompute_num_layers``; with "block" only the first
    ``recompute_num_layers`` blocks (the others keep their activations);
    ``recompute_keep_attention`` keeps the attention outputs of the recomputed blocks.
    """

    FAMILY: ClassVar[str] = ""
    PRESETS: ClassVar[dict] = {}
    ARCHITECTURE_FIELDS: ClassVar[tuple] = ()

    in_channels: int = 16
    """Latent channels of the input."""

    out_channels: int = 16
    """Latent channels of the output."""

    patch_size: tuple = (1, 2, 2)
    """Latent (frames, height, width) of one token."""

    text_dim: int = 4096
    """Channels of the text-encoder states the model cross-attends to."""

    transformer_impl: str = "local"
    """"local": megatron-core's parallel linears; "transformer_engine": Transformer Engine's, where installed."""

    fuse_elementwise: bool = True
    """Compile each elementwise piece (norms, modulation, GELU, residuals, RoPE, with the preceding
    bias) into one kernel with ``torch.compile`` on CUDA."""

    recompute_keep_attention: bool = False
    """Under full recompute: recompute each recomputed block's linears, norms and elementwise work
    in the backward but keep its attention calls' outputs and softmax statistics from the forward
    ([S, hidden] + fp32 [heads, S] more memory per call, no attention forward in the backward)."""

    def __post_init__(self):
        if self.num_attention_heads % self.tensor_model_parallel_size != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not divisible by the tensor-parallel "
                f"size ({self.tensor_model_parallel_size}); pick a tensor-parallel size that divides it"
            )
        if self.cp_comm_type is None:
            self.cp_comm_type = "a2a"
        if self.cp_comm_type not in CP_MODES:
            raise ValueError(f"cp_comm_type must be one of {CP_MODES} ('p2p' = ring), got {self.cp_comm_type!r}")
        heads_per_tp_rank = self.num_attention_heads // self.tensor_model_parallel_size
        if self.cp_comm_type == "a2a" and heads_per_tp_rank % self.context_parallel_size != 0:
            raise ValueError(
                f"all-to-all context parallelism needs the heads per tensor-parallel rank ({heads_per_tp_rank}) "
                f"divisible by the context-parallel size ({self.context_parallel_size}); "
                f"use cp_comm_type='p2p' (ring) or change the sizes"
            )
        if self.transformer_impl not in LINEAR_IMPLS:
            raise ValueError(f"transformer_impl must be one of {LINEAR_IMPLS}, got {self.transformer_impl!r}")
        self.patch_size = tuple(self.patch_size)
        if len(self.patch_size) != 3 or any(p < 1 for p in self.patch_size):
            raise ValueError(f"patch_size must be three positive integers, got {self.patch_size}")
        if self.recompute_granularity not in (None, "full") or self.recompute_method not in (None, "uniform", "block"):
            raise ValueError(f"the {self.FAMILY} model supports recompute_granularity='full' with "
                             "recompute_method 'uniform' or 'block'")
        if self.recompute_keep_attention and self.recompute_granularity != "full":
            raise ValueError("recompute_keep_attention needs recompute_granularity='full'")
        if self.recompute_keep_attention and self.context_parallel_size > 1 and self.cp_comm_type == "p2p":
            # ring attention merges its per-step outputs in place, which selective checkpointing cannot keep
            raise ValueError("recompute_keep_attention does not work with ring context parallelism "
                             "(cp_comm_type='p2p'); use cp_comm_type='a2a' or recompute attention too")
        if self.recompute_granularity == "full" and not 1 <= (self.recompute_num_layers or 0) <= self.num_layers:
            raise ValueError(f"recompute_num_layers must be between 1 and the model's {self.num_layers} layers, "
                             f"got {self.recompute_num_layers}")
        super().__post_init__()
        if self.hidden_size != self.num_attention_heads * self.kv_channels:
            raise ValueError(f"hidden_size ({self.hidden_size}) must equal heads x head dim "
                             f"({self.num_attention_heads} x {self.kv_channels})")
        head_dim = self.kv_channels
        if head_dim % 2 or (head_dim - 4 * (head_dim // 6)) % 2:
            raise ValueError(f"head dim {head_dim} cannot be split into even frame/height/width RoPE parts")

    @property
    def head_dim(self):
        return self.kv_channels

    def max_patches(self) -> tuple:
        """The most patches along frames, height and width: the length of the family's RoPE table."""
        raise NotImplementedError

    def architecture(self) -> dict:
        """The fields that define the weights and the math (not parallelism, dtype or recompute), JSON-ready."""
        return {name: list(v) if isinstance(v, tuple) else v
                for name, v in ((name, getattr(self, name)) for name in self.ARCHITECTURE_FIELDS)}

    @classmethod
    def from_architecture(cls, fields: dict, **overrides):
        """A config from ``architecture()`` fields; ``overrides`` set parallel sizes, dtype, etc."""
        unknown = set(fields) - set(cls.ARCHITECTURE_FIELDS)
        if unknown:
            raise ValueError(f"unknown {cls.FAMILY} architecture fields {sorted(unknown)}")
        return cls(**{"use_cpu_initialization": not torch.cuda.is_available(), **fields, **overrides})

    @classmethod
    def from_preset(cls, name, **overrides):
        """A config from a preset name, with any field overridden."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.FAMILY} preset {name!r}; known: {sorted(cls.PRESETS)}")
        return cls(**{"use_cpu_initialization": not torch.cuda.is_available(), **cls.PRESETS[name], **overrides})
