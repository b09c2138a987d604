"""The configuration of one training run, built once by ``arguments``; nothing below it sees argparse.

Field names are the command-line flags' (``--micro-batch-size`` is ``data.micro_batch_size``), so
a YAML file and the flags fill the same fields. Defaults live here and in ``RCMConfig`` only.
"""

from dataclasses import dataclass, field
from typing import Optional

from ..checks import check_number
from ..diffusion.few_step import DEFAULT_SIGMA_MAX
from ..losses.config import RCMConfig
from ..parallel import ParallelConfig


@dataclass(frozen=True)
class NetworksConfig:
    """How the teacher, student and fake score are built from the teacher checkpoint."""

    bf16: bool = False
    """bf16 parameters with fp32 master weights (needs CUDA); float32 otherwise."""

    cp_comm_type: str = "a2a"
    """Context-parallel attention: all-to-all ("a2a") or ring ("p2p")."""

    recompute_granularity: Optional[str] = None
    """"full" recomputes whole layers in the backward pass (student and fake score); None or "none":
    off. (megatron-core's "selective" recomputes the core attention only, which the flash-attention
    kernels already keep at O(tokens): not offered.)"""

    recompute_method: str = "uniform"
    """megatron-core's recompute method: "uniform" recomputes every block, in chunks of
    ``recompute_num_layers``; "block" recomputes only the first ``recompute_num_layers`` blocks and
    keeps the activations of the rest (faster, more memory: ``tools/plan.py`` picks the count)."""

    recompute_num_layers: int = 1
    """"uniform": blocks per recomputed chunk; "block": blocks recomputed (1 to the model's layers)."""

    recompute_keep_attention: bool = False
    """With "full" recompute: the recomputed blocks keep their attention outputs and softmax
    statistics from the forward and recompute only their linears, norms and elementwise work in
    the backward (PyTorch's selective activation checkpointing). Costs [S, hidden] + fp32
    [heads, S] per attention call per recomputed block; not with ring context parallelism."""

    fake_score_recompute_num_layers: Optional[int] = None
    """With the "block" method: the blocks the fake score recomputes, if not as many as the
    student's (its backward holds one graph, the student's two, so it can keep more); None: the
    student's count."""

    offload_ema: bool = False
    """Keep this rank's EMA slice in (pinned) host memory; each student update copies it to the
    GPU and back."""

    offload_teacher: bool = False
    """Keep the frozen teacher in (pinned) host memory; each of its calls copies it to the GPU and
    frees the copy afterwards."""


@dataclass(frozen=True)
class OptimizationConfig:
    """AdamW and the learning-rate schedule of the student and the fake score (docs/math.md section 5)."""

    lr: float = 2e-6
    """Student learning rate."""

    fake_score_lr: float = 4e-7
    """Fake-score learning rate."""

    lr_warmup_iters: int = 100
    """Linear warm-up from 0, counted in each network's own updates; then constant."""

    weight_decay: float = 0.01
    """Decoupled weight decay (not on biases and 1-D parameters)."""

    adam_beta1: float = 0.0
    """First-moment decay of Adam (beta1)."""

    adam_beta2: float = 0.999
    """Second-moment decay of Adam (beta2)."""

    adam_eps: float = 1e-8
    """Epsilon in the denominator of Adam's update."""

    clip_grad: float = 0.0
    """Gradient-norm clipping threshold; 0 turns clipping off."""

    def __post_init__(self):
        for name in ("lr", "fake_score_lr", "weight_decay", "clip_grad"):
            check_number(name, getattr(self, name), at_least=0)
        check_number("lr_warmup_iters", self.lr_warmup_iters, at_least=0)
        for name in ("adam_beta1", "adam_beta2"):
            check_number(name, getattr(self, name), at_least=0, below=1)
        check_number("adam_eps", self.adam_eps, above=0)


@dataclass(frozen=True)
class DataConfig:
    """Latent shards and how they are batched."""

    data_path: Optional[str] = None
    """Webdataset shards: a folder, a glob or a brace pattern ('shard-{000..009}.tar')."""

    micro_batch_size: int = 1
    """Samples per data-parallel rank and iteration."""

    global_batch_size: Optional[int] = None
    """Samples per iteration over all ranks: micro batch x data-parallel size (no gradient
    accumulation); None until ``arguments.validate`` fills it in."""

    num_workers: int = 2
    """Data-loader worker processes per rank."""

    max_skipped_batches: int = 3
    """Consecutive batches with a NaN or inf that are skipped (on every rank alike, counted in the
    log) before the run stops with an error; 0 stops at the first."""


@dataclass(frozen=True)
class CheckpointConfig:
    """Where checkpoints go and how often."""

    save: Optional[str] = None
    """Save folder (``megatron_rcm.save_folder`` describes its layout); None: nothing is saved."""

    load: Optional[str] = None
    """Resume from the latest checkpoint here (default: ``save``, if it has one)."""

    save_interval: Optional[int] = None
    """Iterations between periodic saves; None or 0: only at the end and on a signal."""

    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted after a save."""

    def __post_init__(self):
        check_number("keep_last", self.keep_last, at_least=1)


@dataclass(frozen=True)
class LoggingConfig:
    """Per-iteration metrics."""

    log_interval: int = 1
    """Iterations between progress lines on stderr."""

    log_jsonl: Optional[str] = None
    """File of per-iteration JSON lines (rank 0)."""

    tensorboard_dir: Optional[str] = None
    """TensorBoard event folder (rank 0)."""

    def __post_init__(self):
        check_number("log_interval", self.log_interval, at_least=1)


@dataclass(frozen=True)
class TrainingConfig:
    """One rCM distillation run."""

    teacher: Optional[str] = None
    """Teacher checkpoint: a diffusers folder or anything ``megatron_rcm.load_model`` reads."""

    model: Optional[str] = None
    """A model preset of any family (``megatron_rcm.models``, e.g. "cosmos-predict2-2b") that a
    diffusers teacher's architecture must match; None: the family and shape the teacher has."""

    negative_prompt_embedding: Optional[str] = None
    """.pt tensor [L, text_dim] for the unconditional branch of guidance."""

    train_iters: Optional[int] = None
    """Iterations of the whole run (student and fake-score iterations together); required, from the
    flag or the YAML file (no default)."""

    seed: int = 1234
    """Seeds the data order, the per-sample noise and the ranks' RNGs."""

    ema_std: float = 0.1
    """Relative standard deviation of the student's power EMA (eq. 5.1)."""

    sigma_max: float = DEFAULT_SIGMA_MAX
    """The few-step sampler's starting noise level (eq. 6.1), recorded with the EMA export."""

    deterministic_mode: bool = False
    """Bit-identical reruns and resumes on GPUs (deterministic kernels, NCCL_ALGO=Ring), at some speed."""

    rcm: RCMConfig = field(default_factory=RCMConfig)
    """The objective."""

    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Tensor, context and sequence parallelism; data parallelism takes the remaining ranks."""

    networks: NetworksConfig = field(default_factory=NetworksConfig)
    """Precision, context-parallel attention and activation recomputation of the networks."""

    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    """Optimizers and learning-rate schedules."""

    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""

    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints."""

    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics."""

    def __post_init__(self):
        check_number("ema_std", self.ema_std, above=0, below=12 ** -0.5, note=" (the power EMA's range)")
        check_number("sigma_max", self.sigma_max, above=0)
