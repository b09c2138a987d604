"""The CPU optimizer and schedule (``training.optimizer``) against torch's own AdamW, on 2 gloo ranks
at TP=2: each rank's shard is updated as a plain AdamW with the flags' betas, eps and weight decay
(none on biases and 1-D parameters) would update it, at the learning rate of a linear warm-up from 0
counted in taken updates (docs/math.md section 5); and an inf gradient on one tensor-parallel rank
only skips the update on both ranks."""

import pytest
import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.testing import run_distributed
from megatron_rcm.training.config import OptimizationConfig
from megatron_rcm.training.optimizer import build_optimizer, build_scheduler, optimizer_step

# every setting away from its default and from the others, so that one taken for another shows
SETTINGS = OptimizationConfig(lr_warmup_iters=3, weight_decay=0.3, adam_beta1=0.8, adam_beta2=0.9, adam_eps=0.05)
LR, UPDATES = 0.1, 5


def _against_torch_adamw():
    with parallel_context(ParallelConfig(tensor_model_parallel_size=2)):
        from megatron_rcm.models.wan import WanModel, wan_config

        rank = torch.distributed.get_rank()
        model = WanModel(wan_config("tiny-a", use_cpu_initialization=True, tensor_model_parallel_size=2))
        ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
        optimizer = build_optimizer(ddp, SETTINGS, LR)
        scheduler = build_scheduler(optimizer, SETTINGS, LR, train_iters=10)
        named = list(model.named_parameters())
        reference = [torch.nn.Parameter(p.detach().clone()) for _, p in named]
        initial = [p.detach().clone() for _, p in named]
        decays = [not name.endswith(".bias") and p.dim() > 1 for name, p in named]
        assert any(decays) and not all(decays)
        torch_adamw = torch.optim.AdamW(
            [{"params": [r for r, d in zip(reference, decays) if d], "weight_decay": SETTINGS.weight_decay},
             {"params": [r for r, d in zip(reference, decays) if not d], "weight_decay": 0.0}],
            lr=LR, betas=(SETTINGS.adam_beta1, SETTINGS.adam_beta2), eps=SETTINGS.adam_eps)
        g = torch.Generator().manual_seed(100 + rank)  # each rank's shard its own gradient

        def set_gradients(poison):
            ddp.zero_grad_buffer()
            for (_, p), r in zip(named, reference):
                r.grad = torch.randn(p.shape, generator=g)
                p.main_grad.copy_(r.grad)
            if poison:
                named[-1][1].main_grad.view(-1)[-1] = float("inf")

        set_gradients(poison=rank == 1)  # an inf on rank 1 only: neither rank steps
        skipped = optimizer_step(optimizer, SETTINGS.clip_grad)[0] is False
        unchanged = all(torch.equal(p, r) for (_, p), r in zip(named, reference))
        lrs, errors = [], []
        for update in range(UPDATES):
            set_gradients(poison=False)
            lrs.append(optimizer.param_groups[0]["lr"])
            for group in torch_adamw.param_groups:
                group["lr"] = LR * min(update, SETTINGS.lr_warmup_iters) / SETTINGS.lr_warmup_iters
            assert optimizer_step(optimizer, SETTINGS.clip_grad)[0]
            scheduler.step(increment=1)
            torch_adamw.step()
            errors.append(max((p - r).abs().max().item() for (_, p), r in zip(named, reference)))
        moved = min((p - start).abs().max().item() for (_, p), start in zip(named, initial))
        return skipped, unchanged, lrs, errors, moved


def test_cpu_optimizer_is_torch_adamw_with_the_flags_and_the_warm_up():
    for skipped, unchanged, lrs, errors, moved in run_distributed(_against_torch_adamw, world_size=2):
        assert skipped and unchanged and moved > 0  # every tensor moved, none skipped
        assert lrs == pytest.approx([0.0, LR / 3, 2 * LR / 3, LR, LR], rel=1e-15, abs=0.0)  # float rounding
        assert errors == [0.0] * UPDATES, errors
