"""The three rCM networks from one teacher checkpoint, and the student's EMA.

* teacher: frozen (no grads, no optimizer state), always called under no_grad, wrapped in
  classifier-free guidance with the negative-prompt embedding (a second wrapper of the same
  module where the DMD direction's scale differs);
* student and fake score: trainable copies of the teacher, each in megatron-core's
  DistributedDataParallel (gradients reduced in fp32 into ``param.main_grad``; with the
  distributed optimizer on GPU, reduce-scattered) with their own optimizer and schedule;
* the student's power EMA in fp32, sharded over the data+context-parallel ranks like the
  distributed optimizer's states (``ShardedPowerEMA``);
* ``offload_teacher`` / ``offload_ema`` keep the teacher / the EMA slice in host memory between uses.
The losses call the bare modules (DDP's hooks sit on the parameters, so gradients still reach
its buffers); ``jvp`` is a method of the module only.
"""

from dataclasses import dataclass

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

from ..loading import load_model, load_model_config
from ..diffusion.denoiser import TrigFlowDenoiser
from ..diffusion.guidance import ClassifierFreeGuidance
from ..kernels import fa4
from ..models import elementwise
from .config import TrainingConfig
from .ema import ShardedPowerEMA
from .offload import HostResident
from .optimizer import build_optimizer, build_scheduler


@dataclass
class Trainable:
    """One network that trains, with what updates it."""

    module: torch.nn.Module
    """The model itself (its parameters are the ones saved and converted)."""

    ddp: DistributedDataParallel
    """megatron-core's wrapper of ``module`` that owns the gradient buffers and reduces them."""

    optimizer: object
    """megatron-core's optimizer over ``ddp``'s parameters (distributed or not)."""

    scheduler: object
    """megatron-core's learning-rate scheduler of ``optimizer``."""

    denoiser: TrigFlowDenoiser
    """``ddp`` seen as a TrigFlow x0 predictor: what the losses call."""


@dataclass
class Networks:
    """Everything an rCM iteration runs."""

    teacher: TrigFlowDenoiser
    """The frozen teacher, guided at ``rcm.guidance_scale``: the sCM target."""

    student: Trainable
    """The few-step generator being distilled."""

    fake_score: Trainable
    """The critic that learns the student's distribution for the DMD term."""

    ema: ShardedPowerEMA
    """Power EMA of the student's weights, sharded like the distributed optimizer's states."""

    dmd_teacher: TrigFlowDenoiser
    """The same teacher guided at ``rcm.dmd_guidance`` (the same object when the two scales are equal)."""


def model_overrides(config: TrainingConfig):
    return dict(params_dtype=torch.bfloat16 if config.networks.bf16 else torch.float32,
                sequence_parallel=config.parallel.sequence_parallel, cp_comm_type=config.networks.cp_comm_type,
                use_cpu_initialization=not torch.cuda.is_available())


def _load(config: TrainingConfig, device, recompute_num_layers=None):
    """The teacher's weights in a new model; ``recompute_num_layers`` (None: no recompute) applies
    the networks' recompute settings with that count."""
    overrides = model_overrides(config)
    networks = config.networks
    if recompute_num_layers is not None and networks.recompute_granularity == "full":
        overrides.update(recompute_granularity=networks.recompute_granularity,
                         recompute_method=networks.recompute_method, recompute_num_layers=recompute_num_layers,
                         recompute_keep_attention=networks.recompute_keep_attention)
    return load_model(config.teacher, **overrides).to(device)


def _trainable(config: TrainingConfig, device, lr, recompute_num_layers):
    module = _load(config, device, recompute_num_layers)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=torch.cuda.is_available())
    ddp = DistributedDataParallel(module.config, ddp_config, module)
    optimizer = build_optimizer(ddp, config.optimization, lr, config.networks.bf16)
    scheduler = build_scheduler(optimizer, config.optimization, lr, config.train_iters)
    return Trainable(module, ddp, optimizer, scheduler, TrigFlowDenoiser(module))


def load_negative_embedding(path, text_dim, dtype, device):
    embedding = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2 or embedding.shape[1] != text_dim:
        shape = tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
        raise ValueError(f"negative-prompt embedding {path} must be a tensor [L, {text_dim}], got {shape}")
    return embedding.to(device=device, dtype=dtype)


def start_warm_ups(config: TrainingConfig, device):
    """Start what prepares kernels in the background, for a trainer to call before it builds its
    networks: TorchInductor's compile workers, and FlashAttention-4's import and compile for the
    teacher's dtype and head dim (``kernels.fa4.warm_up``, where it serves)."""
    elementwise.start_compile_workers(device)
    teacher = load_model_config(config.teacher, **model_overrides(config))
    fa4.warm_up(teacher.params_dtype, teacher.kv_channels, device)


def build_networks(config: TrainingConfig, device):
    """Teacher, student, fake score (inside an initialised parallel context) and the student EMA."""
    teacher = _load(config, device).requires_grad_(False).eval()
    negative = None
    if config.negative_prompt_embedding:
        negative = load_negative_embedding(config.negative_prompt_embedding, teacher.config.text_dim,
                                           teacher.config.params_dtype, device)
    if config.networks.offload_teacher:
        teacher = HostResident(teacher, device)
    guided = TrigFlowDenoiser(ClassifierFreeGuidance(teacher, negative, config.rcm.guidance_scale))
    dmd_guided = guided
    if config.rcm.dmd_guidance != config.rcm.guidance_scale:
        dmd_guided = TrigFlowDenoiser(ClassifierFreeGuidance(teacher, negative, config.rcm.dmd_guidance))
    recompute = config.networks.recompute_num_layers
    fake_score_recompute = config.networks.fake_score_recompute_num_layers
    student = _trainable(config, device, config.optimization.lr, recompute)
    fake_score = _trainable(config, device, config.optimization.fake_score_lr,
                            recompute if fake_score_recompute is None else fake_score_recompute)
    ema = ShardedPowerEMA(student.module, config.ema_std, parallel_state.get_data_parallel_group(with_context_parallel=True),
                          offload=config.networks.offload_ema)
    return Networks(guided, student, fake_score, ema, dmd_guided)
