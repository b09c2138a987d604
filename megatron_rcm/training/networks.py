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


def model_overrides(args):
    return dict(params_dtype=torch.bfloat16 if args.bf16 else torch.float32,
                sequence_parallel=args.sequence_parallel, cp_comm_type=args.cp_comm_type,
                use_cpu_initialization=not torch.cuda.is_available())


def _load(args, device, recompute):
    overrides = model_overrides(args)
    if recompute and args.recompute_granularity:
        overrides.update(recompute_granularity=args.recompute_granularity, recompute_method=args.recompute_method,
                         recompute_num_layers=args.recompute_num_layers)
    return load_model(args.teacher, **overrides).to(device)


def _trainable(args, device, lr):
    module = _load(args, device, recompute=True)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=torch.cuda.is_available())
    ddp = DistributedDataParallel(module.config, ddp_config, module)
    optimizer = build_optimizer(ddp, args, lr)
    return Trainable(module, ddp, optimizer, build_scheduler(optimizer, args, lr), TrigFlowDenoiser(module))


def load_negative_embedding(path, text_dim, dtype, device):
    embedding = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2 or embedding.shape[1] != text_dim:
        shape = tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
        raise ValueError(f"negative-prompt embedding {path} must be a tensor [L, {text_dim}], got {shape}")
    return embedding.to(device=device, dtype=dtype)


def build_networks(args, device):
    """Teacher, student, fake score (inside an initialised parallel context) and the student EMA."""
    teacher = _load(args, device, recompute=False).requires_grad_(False).eval()
    negative = None
    if args.negative_prompt_embedding:
        negative = load_negative_embedding(args.negative_prompt_embedding, teacher.config.text_dim,
                                           teacher.config.params_dtype, device)
    guided = TrigFlowDenoiser(ClassifierFreeGuidance(teacher, negative, args.guidance_scale))
    student = _trainable(args, device, args.lr)
    fake_score = _trainable(args, device, args.fake_score_lr)
    return Networks(guided, student, fake_score, PowerEMA(student.module, relative_std=args.ema_std))
