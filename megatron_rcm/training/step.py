"""One rCM iteration (rcm-math.md section 4): a student step (sCM + DMD) or a fake-score step.

Both end in ``_update``: a collective finiteness check of the loss (a non-finite or graph-less
loss on any rank skips the step everywhere), the backward, megatron's ``finalize_model_grads``
(data+context-parallel reduction, TP sum of sequence-parallel replicated weights), the
optimizer step (skipped everywhere on a non-finite gradient) and the learning-rate schedule.
"""

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads

from ..losses.dmd import dmd_loss, fake_score_loss, rollout_steps, student_rollout
from ..losses.scm import scm_loss, tangent_warmup_ratio
from ..parallel import current_device
from .optimizer import optimizer_step


def _all_ranks_ok(ok: bool) -> bool:
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=current_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _update(net, loss, clip_grad, prefix):
    """Backward + step of one Trainable; returns its metrics."""
    net.ddp.zero_grad_buffer()
    net.optimizer.zero_grad()
    ok = _all_ranks_ok(bool(loss.requires_grad and torch.isfinite(loss)))
    metrics = {f"{prefix}/skipped_nonfinite_loss": int(not ok), f"{prefix}/skipped_nonfinite_grad": 0,
               f"{prefix}/lr": net.optimizer.param_groups[0]["lr"], f"{prefix}/grad_norm": float("nan")}
    if not ok:
        return metrics
    # megatron's DDP divides by the data x context-parallel size, but the context-parallel ranks
    # hold partial sums of one loss's gradient: scale up by CP (as Megatron-LM's loss functions do)
    (loss * parallel_state.get_context_parallel_world_size()).backward()
    finalize_model_grads([net.ddp])
    updated, grad_norm = optimizer_step(net.optimizer, clip_grad)
    metrics[f"{prefix}/skipped_nonfinite_grad"] = int(not updated)
    metrics[f"{prefix}/grad_norm"] = grad_norm
    if updated:
        net.scheduler.step(increment=1)
    return metrics


def student_step(nets, rcm, batch, noise, iteration, student_updates, clip_grad):
    """sCM term (+ DMD term after the tangent warm-up), student update, EMA update."""
    x0, text = batch
    loss = torch.zeros((), dtype=torch.float64, device=x0.device)
    diagnostics = {}
    student = nets.student.denoiser
    if rcm.scm_weight > 0:
        ratio = tangent_warmup_ratio(iteration, rcm.tangent_warmup)
        loss_scm, diag = scm_loss(student, nets.teacher, x0, noise.eps, noise.t_scm, text, ratio)
        loss = loss + rcm.scm_weight * loss_scm
        diagnostics.update(diag, **{"loss/scm": loss_scm.detach()})
    if rcm.uses_dmd(iteration):
        steps = rollout_steps(student_updates, rcm.max_rollout_steps)
        G = student_rollout(student, noise.rollout[:steps], text, rcm.mid_times)
        loss_dmd, diag = dmd_loss(G, noise.t_dmd, noise.eps_dmd, text, nets.teacher, nets.fake_score.denoiser)
        loss = loss + rcm.dmd_weight * loss_dmd
        diagnostics.update(diag, **{"loss/dmd": loss_dmd.detach()})
    diagnostics["loss/student"] = loss.detach()
    metrics = _update(nets.student, loss, clip_grad, "student")
    if not (metrics["student/skipped_nonfinite_loss"] or metrics["student/skipped_nonfinite_grad"]):
        nets.ema.update(nets.student.module)
    return diagnostics, metrics


def fake_score_step(nets, rcm, batch, noise, critic_updates, clip_grad):
    """Fake-score (critic) update on a student rollout made without grad (eq. 4.4)."""
    _, text = batch
    with torch.no_grad():
        steps = rollout_steps(critic_updates, rcm.max_rollout_steps)
        G = student_rollout(nets.student.denoiser, noise.rollout[:steps], text, rcm.mid_times)
    loss, diagnostics = fake_score_loss(G, noise.t_dmd, noise.eps_dmd, text, nets.fake_score.denoiser)
    diagnostics["loss/fake_score"] = loss.detach()
    return diagnostics, _update(nets.fake_score, loss, clip_grad, "fake_score")
