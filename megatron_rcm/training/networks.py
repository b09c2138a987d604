"""The three rCM networks from one teacher checkpoint, and the student's EMA.

* teacher: frozen (no grads, no optimizer state), always called under no_grad, wrapped in
  classifier-free guidance with the negative-prompt embedding;
* student and fake score: trainable copies of the teacher, each in megatron-core's
  DistributedDataParallel (gradients reduced in fp32 into ``param.main_grad``; with the
  distributed optimizer on GPU, reduce-scattered) with their own optimizer and schedule;
* the student's power EMA in fp32, one tensor per local parameter shard.
The losses call the bare modules (DDP's hooks sit on the parameters, so gradients still reach
its buffers); ``jvp`` is a method of the module only.
"""

from dataclasses import dataclass

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

from .. import load_model
from ..diffusion.denoiser import TrigFlowDenoiser
from ..diffusion.guidance import ClassifierFreeGuidance
from .config import TrainingConfig
from .ema import PowerEMA
from .optimizer import build_optimizer, build_scheduler


@dataclass
class Trainable:
    module: torch.nn.Module
    ddp: DistributedDataParallel
    optimizer: object
    scheduler: object
    denoiser: TrigFlowDenoiser


@dataclass
class Networks:
    teacher: TrigFlowDenoiser  # guided
    student: Trainable
    fake_score: Trainable
    ema: PowerEMA


def model_overrides(config: TrainingConfig):
    return dict(params_dtype=torch.bfloat16 if config.networks.bf16 else torch.float32,
                sequence_parallel=config.parallel.sequence_parallel, cp_comm_type=config.networks.cp_comm_type,
                use_cpu_initialization=not torch.cuda.is_available())


def _load(config: TrainingConfig, device, recompute):
    overrides = model_overrides(config)
    networks = config.networks
    if recompute and networks.recompute_granularity:
        overrides.update(recompute_granularity=networks.recompute_granularity,
                         recompute_method=networks.recompute_method,
                         recompute_num_layers=networks.recompute_num_layers)
    return load_model(config.teacher, **overrides).to(device)


def _trainable(config: TrainingConfig, device, lr):
    module = _load(config, device, recompute=True)
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


def build_networks(config: TrainingConfig, device):
    """Teacher, student, fake score (inside an initialised parallel context) and the student EMA."""
    teacher = _load(config, device, recompute=False).requires_grad_(False).eval()
    negative = None
    if config.negative_prompt_embedding:
        negative = load_negative_embedding(config.negative_prompt_embedding, teacher.config.text_dim,
                                           teacher.config.params_dtype, device)
    guided = TrigFlowDenoiser(ClassifierFreeGuidance(teacher, negative, config.rcm.guidance_scale))
    student = _trainable(config, device, config.optimization.lr)
    fake_score = _trainable(config, device, config.optimization.fake_score_lr)
    return Networks(guided, student, fake_score, PowerEMA(student.module, relative_std=config.ema_std))
