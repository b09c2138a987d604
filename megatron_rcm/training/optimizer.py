"""Optimizers and learning-rate schedules for the student and the fake score.

GPU: megatron-core's ``get_megatron_optimizer`` (AdamW; with ``--bf16`` the DistributedOptimizer
over bf16 params with fp32 master weights, sharded over data-parallel ranks). A constant loss
scale of 1 turns on megatron's non-finite gradient check (``prepare_grads``) without scaling.
Without Apex or Transformer Engine megatron falls back to torch's AdamW, whose default on CUDA is
the foreach implementation: about ten passes over the fp32 states per step. ``fuse_adam`` switches
it to torch's fused kernel, one pass (docs/benchmarks.md has the times).

CPU: megatron's optimizer allocates on ``'cuda'``, so ``CpuFP32Optimizer`` stands in: megatron's
``FP32Optimizer`` (same interface, same sharded checkpoint format: Adam state keyed like the
parameters) with the norm, clipping and non-finite check done on CPU tensors. Both take the
gradients megatron's DDP reduced into ``param.main_grad``.
"""

import torch
import torch.distributed as dist
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer.optimizer import FP32Optimizer, MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from .config import OptimizationConfig


def optimizer_config(settings: OptimizationConfig, lr: float, bf16: bool) -> OptimizerConfig:
    return OptimizerConfig(
        optimizer="adam", lr=lr, min_lr=lr, weight_decay=settings.weight_decay, adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2, adam_eps=settings.adam_eps, bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=torch.cuda.is_available(), clip_grad=settings.clip_grad,
        loss_scale=1.0 if torch.cuda.is_available() else None,
    )


def _param_groups(module):
    """Megatron's default groups (no weight decay on biases and 1-D parameters), with the keys its
    checkpoint loading matches groups by."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith(".bias") or p.dim() == 1 else decay).append(p)
    same = dict(lr_mult=1.0, is_expert_parallel=False, is_decoupled_lr=False)
    return [dict(params=decay, wd_mult=1.0, **same), dict(params=no_decay, wd_mult=0.0, **same)]


class CpuFP32Optimizer(FP32Optimizer):
    """megatron's FP32Optimizer (AdamW on ``param.main_grad``) without its CUDA tensors."""

    def __init__(self, module, config: OptimizerConfig):
        optimizer = torch.optim.AdamW(_param_groups(module), lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                      eps=config.adam_eps, weight_decay=config.weight_decay)
        MegatronOptimizer.__init__(self, optimizer, config, init_state_fn=_init_adam_state)
        self._scale = torch.ones(1)
        self.is_stub_optimizer = False

    def prepare_grads(self) -> bool:
        """main_grad -> grad; True if any gradient on any model-parallel rank is non-finite."""
        super().prepare_grads()
        found = torch.zeros(1)
        for p in self.get_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                found.fill_(1.0)
        dist.all_reduce(found, op=dist.ReduceOp.MAX, group=self.get_grad_stats_parallel_group())
        return bool(found.item())

    @torch.no_grad()
    def get_grad_norm(self):
        total = torch.zeros((), dtype=torch.float64)
        for g in self.get_main_grads_for_grad_norm():
            total += g.double().pow(2).sum()
        dist.all_reduce(total, group=self.get_grad_stats_parallel_group())
        return total.sqrt().item()

    @torch.no_grad()
    def clip_grad_norm(self, clip_grad: float) -> float:
        norm = self.get_grad_norm()
        coefficient = clip_grad / (norm + 1.0e-6)  # megatron's clip_grad_by_total_norm_fp32
        if coefficient < 1.0:
            for p in self.get_parameters():
                if p.grad is not None:
                    p.grad.mul_(coefficient)
        return norm


def _init_adam_state(optimizer, config=None):
    """Create Adam's state where a parameter has none (megatron's init_state_fn)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if len(optimizer.state[p]) == 0:
                optimizer.state[p]["exp_avg"] = torch.zeros_like(p)
                optimizer.state[p]["exp_avg_sq"] = torch.zeros_like(p)
                optimizer.state[p]["step"] = torch.zeros((), device=_step_device(group, p))


def _step_device(group, param):
    """Where torch's AdamW keeps a parameter's step count: the fused kernel reads it on the
    parameter's device, the foreach and single-tensor ones on the host."""
    return param.device if group.get("fused") else torch.device("cpu")


def fuse_adam(torch_optimizer):
    """Switch a torch AdamW over CUDA parameters (megatron's fallback without Apex/TE) to the fused
    kernel, and give each parameter its own step count where that kernel reads it; any other
    optimizer keeps its kernel."""
    if isinstance(torch_optimizer, torch.optim.AdamW):
        for group in torch_optimizer.param_groups:
            if all(p.is_cuda for p in group["params"]):
                group["fused"], group["foreach"] = True, False
    unshare_steps(torch_optimizer)


def ensure_adam_state(optimizer):
    """Adam state (zeros, step 0: what torch's first step creates) where an optimizer has none.
    megatron's DistributedOptimizer reads every parameter's state while it builds a sharded state
    dict, both to load into (without Apex/TE it reads 'step') and to save (it reads 'exp_avg'): an
    optimizer that has not stepped yet, like sCM-only's fake score, has none (KeyError on H200)."""
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        _init_adam_state(inner.optimizer)


_PARAM_STATE_LOADERS = {"fully_reshardable": "fully_reshardable", "dp_reshardable": "dp_reshardable",
                        "dp_zero_gather_scatter": "dp_zero", "fully_sharded_model_space": "fs_model_space"}


def load_optimizer_state(optimizer, state_dict):
    """``optimizer.load_state_dict(state_dict)``, with megatron-core 0.19's DistributedOptimizer over
    torch's AdamW (no Apex/TE) made to work: its parameter-state loaders copy every tensor of a
    parameter's Adam state from the checkpoint, 'step' included, which checkpoints hold once per
    param group, not per parameter (KeyError: 'step', seen on 4 x H200). The parameter state is
    loaded here with the steps held aside; they were already restored from the param groups."""
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    parts = [state_dict] if len(inner) == 1 else [v for _, v in sorted(state_dict.items())]
    for opt, part in zip(inner, parts):
        if not isinstance(opt, DistributedOptimizer) or "param_state" not in part:
            opt.load_state_dict(_with_zero_step(part))
        else:
            part = dict(part)
            param_state, sharding_type = part.pop("param_state"), part.pop("param_state_sharding_type")
            opt.load_state_dict(part)  # param groups, steps, grad scaler
            steps = {p: s.pop("step") for p, s in opt.optimizer.state.items() if "step" in s}
            getattr(opt, f"load_parameter_state_from_{_PARAM_STATE_LOADERS[sharding_type]}")(param_state)
            for p, step in steps.items():
                opt.optimizer.state[p]["step"] = step
        # the loaded param groups carry the kernel choice of the run that saved them, and one step
        # tensor shared by every parameter (unshared here)
        fuse_adam(opt.optimizer)
    if len(inner) > 1:
        optimizer._synchronize_steps()


def _with_zero_step(state_dict):
    """``state_dict`` with the common step that megatron's FP32Optimizer leaves out when it is 0
    (it saves it only if truthy): an optimizer that had not stepped before the save (the fake score
    during the tangent warm-up, or in an sCM-only run) came back with Adam state but no step,
    which torch's Adam refuses (KeyError: 'step')."""
    state = state_dict.get("state")
    if isinstance(state, dict) and state and "common_step" not in state:
        state["common_step"] = torch.zeros(())
    return state_dict


def unshare_steps(torch_optimizer):
    """Give every parameter its own 'step' tensor, where its kernel reads it (``_step_device``).
    megatron's DistributedOptimizer.load_state_dict (no Apex/TE) puts one tensor into every
    parameter's state; torch's Adam then adds 1 to it once per parameter, so the bias correction
    of the first step after a resume was wrong (seen on 4 x H200: the resumed fake-score update
    differed from the straight run's)."""
    for group in torch_optimizer.param_groups:
        for p in group["params"]:
            state = torch_optimizer.state.get(p, {})
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(_step_device(group, p), copy=True)


def build_optimizer(ddp_model, settings: OptimizationConfig, lr: float, bf16: bool = False):
    config = optimizer_config(settings, lr, bf16)
    if torch.cuda.is_available():
        optimizer = get_megatron_optimizer(config, [ddp_model])
        for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
            fuse_adam(inner.optimizer)
        return optimizer
    return CpuFP32Optimizer(ddp_model.module, config)


def build_scheduler(optimizer, settings: OptimizationConfig, lr: float, train_iters: int):
    """Linear warm-up from 0 over ``lr_warmup_iters`` updates, then constant (docs/math.md section 5)."""
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=lr, min_lr=lr, lr_warmup_steps=settings.lr_warmup_iters,
        lr_decay_steps=max(train_iters, settings.lr_warmup_iters + 1), lr_decay_style="constant",
        start_wd=settings.weight_decay, end_wd=settings.weight_decay, wd_incr_steps=train_iters,
        wd_incr_style="constant",
    )


def optimizer_step(optimizer, clip_grad):
    """(updated, grad norm): skips the update, on every rank, when a gradient is non-finite."""
    if optimizer.prepare_grads():
        return False, float("nan")
    grad_norm = optimizer.clip_grad_norm(clip_grad) if clip_grad > 0 else optimizer.get_grad_norm()
    optimizer.step_with_ready_grads()
    return True, float(grad_norm)
