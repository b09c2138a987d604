"""What is being planned: the model and video size (``Workload``), a parallel layout (``Layout``),
the cluster (``Cluster``), and the checks that refuse impossible requests (``PlanError``)."""

import math
from dataclasses import dataclass

from ..models.wan import wan_config
from ..models.wan.weight_map import wan_parameters

# Wan2.1's VAE: 4x temporal (first frame kept), 8x spatial compression, 16 latent channels
VAE_TIME, VAE_SPACE = 4, 8
# the attention kernels tile queries in blocks of 128: a context-parallel chunk needs at least one
MIN_TOKENS_PER_CP_RANK = 128
_TABLES = {}


class PlanError(ValueError):
    """A request that no layout can serve; the message says what to change."""


def parameter_table(config) -> tuple:
    """((global shape, TP axis or None), ...) of every parameter, in weight-map order (whose first
    entry, patch_embedding.weight, is also the module's first parameter)."""
    key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(config.architecture().items()))
    if key not in _TABLES:  # the planner asks for it once per layout it scores
        _TABLES[key] = tuple((p.global_shape, p.tp_axis) for p in wan_parameters(config).values())
    return _TABLES[key]


@dataclass(frozen=True)
class Workload:
    """One rCM training run to place on a cluster."""

    preset: str
    """Wan preset name (``megatron_rcm.models.wan.PRESETS``)."""
    height: int = 480
    """Video height in pixels (a multiple of 8 x the patch height)."""
    width: int = 832
    """Video width in pixels."""
    frames: int = 81
    """Video frames (4k + 1)."""
    micro_batch_size: int = 1
    """Samples per data-parallel rank and iteration."""
    text_len: int = 512
    """Text-embedding tokens (umT5 pads to 512)."""
    num_layers: int = None
    """Override of the preset's layer count (e.g. the 14B width with the few layers that fit one GPU)."""
    student_update_freq: int = 5
    """One student iteration per this many iterations; the others update the fake score."""

    def config(self, **overrides):
        """The WanConfig of this workload (on CPU, no process group needed)."""
        if self.num_layers is not None:
            overrides.setdefault("num_layers", self.num_layers)
        return wan_config(self.preset, **{"use_cpu_initialization": True, **overrides})

    def latent_shape(self):
        """(latent frames, latent height, latent width) of the video."""
        if (self.frames - 1) % VAE_TIME:
            raise PlanError(f"--frames {self.frames} must be 4k + 1 (the Wan VAE keeps the first frame, "
                            f"then compresses 4 frames into one); e.g. 81")
        return (self.frames - 1) // VAE_TIME + 1, self.height // VAE_SPACE, self.width // VAE_SPACE

    def latent_grid(self, config):
        """The patch grid (frames, height, width) of the latent video."""
        latent = self.latent_shape()
        for name, pixels, size, patch, scale in zip(("frames", "height", "width"), (self.frames, self.height, self.width),
                                                     latent, config.patch_size, (1, VAE_SPACE, VAE_SPACE)):
            if name != "frames" and pixels % (scale * patch):
                raise PlanError(f"--{name} {pixels} must be a multiple of {scale * patch} "
                                f"(VAE {scale}x times patch {patch})")
            if size % patch:
                raise PlanError(f"{name}: {size} latent steps are not divisible by the patch size {patch}")
        return tuple(s // p for s, p in zip(latent, config.patch_size))

    def tokens(self, config) -> int:
        """Video tokens of one sample (latent patches)."""
        return math.prod(self.latent_grid(config))


@dataclass(frozen=True)
class Layout:
    """How one rCM job is laid out on its GPUs; a point the planner scores."""

    tp: int = 1
    """Tensor-parallel size."""
    cp: int = 1
    """Context-parallel size."""
    dp: int = 1
    """Data-parallel size."""
    cp_mode: str = "a2a"
    """Context parallelism: "a2a" (all-to-all, heads / TP divisible by CP) or "p2p" (ring)."""
    sp: bool = False
    """Sequence parallelism (TP > 1 only)."""
    recompute: str = "full"
    """Activation recompute of the student and fake score: "full" (every block), "block" (the first
    ``recompute_blocks`` blocks, megatron-core's "block" method) or "none"."""
    recompute_blocks: int = 0
    """Blocks recomputed under "block" (1 to the model's layers); ignored otherwise."""
    fake_score_recompute_blocks: int = None
    """Under "block", the fake score's count if not the student's (its backward holds one graph,
    the student's two)."""
    keep_attention: bool = False
    """Under "full" or "block": the recomputed blocks keep their attention outputs and rerun only
    the rest in the backward (``--recompute-keep-attention``)."""
    offload_ema: bool = False
    """Keep the EMA shard in host memory between updates."""
    offload_teacher: bool = False
    """Keep the frozen teacher in host memory between its calls."""

    @property
    def gpus(self) -> int:
        return self.tp * self.cp * self.dp

    def recomputed_blocks(self, num_layers: int, network: str = "student") -> int:
        """How many of the model's blocks the backward of ``network`` ("student", "fake_score") recomputes."""
        if self.recompute != "block":
            return num_layers if self.recompute == "full" else 0
        if network == "fake_score" and self.fake_score_recompute_blocks is not None:
            return self.fake_score_recompute_blocks
        return self.recompute_blocks

    def flags(self) -> list:
        """The examples/pretrain_rcm.py flags of this layout, each given both ways so that a recipe's
        YAML cannot change it."""
        def switch(name, on):
            return [f"--{name}" if on else f"--no-{name}"]

        out = ["--tensor-model-parallel-size", str(self.tp), "--context-parallel-size", str(self.cp)]
        out += ["--cp-comm-type", self.cp_mode] if self.cp > 1 else []
        out += switch("sequence-parallel", self.sp)
        if self.recompute == "none":
            out += ["--recompute-granularity", "none"]
        elif self.recompute == "full":
            out += ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
        else:
            fake_score = self.recompute_blocks if self.fake_score_recompute_blocks is None \
                else self.fake_score_recompute_blocks
            out += ["--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers",
                    str(self.recompute_blocks), "--fake-score-recompute-num-layers", str(fake_score)]
        return out + switch("recompute-keep-attention", self.keep_attention) + switch("offload-ema", self.offload_ema) \
            + switch("offload-teacher", self.offload_teacher)


@dataclass(frozen=True)
class Cluster:
    """The GPUs a job may use."""

    gpus: int
    """GPUs in all."""
    gpu_memory_gib: float
    """Memory per GPU in GiB."""
    gpus_per_node: int = 8
    """GPUs per node: tensor parallelism stays within a node, context parallelism is placed next."""


def check_layout(workload: Workload, layout: Layout, config=None):
    """Raise PlanError if ``layout`` cannot run ``workload`` (the model's own rules); returns the config."""
    config = config or workload.config()
    heads = config.num_attention_heads
    if layout.tp < 1 or layout.cp < 1 or layout.dp < 1:
        raise PlanError(f"parallel sizes must be positive, got TP {layout.tp}, CP {layout.cp}, DP {layout.dp}")
    if heads % layout.tp:
        raise PlanError(f"{heads} attention heads are not divisible by TP {layout.tp}; "
                        f"pick a TP among {[t for t in range(1, heads + 1) if heads % t == 0]}")
    split = sorted({shape[axis] for shape, axis in parameter_table(config) if axis is not None and shape[axis] % layout.tp})
    if split:
        raise PlanError(f"TP {layout.tp} does not divide {split[0]} channels of a split weight (hidden "
                        f"{config.hidden_size}, FFN {config.ffn_hidden_size}); pick a TP that divides both")
    if layout.sp and layout.tp == 1:
        raise PlanError("sequence parallelism needs TP > 1")
    if layout.cp_mode not in ("a2a", "p2p"):
        raise PlanError(f"CP mode must be 'a2a' or 'p2p', got {layout.cp_mode!r}")
    if layout.cp > 1 and layout.cp_mode == "a2a" and (heads // layout.tp) % layout.cp:
        raise PlanError(f"all-to-all CP {layout.cp} needs the {heads // layout.tp} heads per TP rank divisible by "
                        f"it; use --cp-mode p2p (ring) or another CP")
    tokens = workload.tokens(config)
    if tokens < layout.cp * MIN_TOKENS_PER_CP_RANK:
        raise PlanError(f"{tokens} video tokens cannot be split over CP {layout.cp}: each context-parallel rank "
                        f"needs at least {MIN_TOKENS_PER_CP_RANK}; use CP <= {tokens // MIN_TOKENS_PER_CP_RANK}")
    if layout.recompute not in ("full", "block", "none"):
        raise PlanError(f"recompute must be 'full', 'block' or 'none', got {layout.recompute!r}")
    if layout.keep_attention and (layout.recompute == "none" or (layout.cp > 1 and layout.cp_mode == "p2p")):
        raise PlanError("keeping attention outputs needs full or block recompute and no ring (p2p) context "
                        "parallelism")
    if layout.recompute == "block":
        for network in ("student", "fake_score"):
            blocks = layout.recomputed_blocks(config.num_layers, network)
            if not 1 <= blocks <= config.num_layers:
                raise PlanError(f"block recompute of {blocks} blocks ({network}): give 1 to the model's "
                                f"{config.num_layers} blocks")
    return config
