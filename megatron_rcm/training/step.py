"""The Megatron update of one rCM iteration: the student's (losses.rcm.student_loss_terms) or the fake
score's (losses.rcm.critic_loss).

Both end in ``_update``: the backward of each loss term as it comes, a collective finiteness check
(a non-finite or graph-less loss on any rank skips the step everywhere), megatron's ``finalize_model_grads``
(data+context-parallel reduction, TP sum of sequence-parallel replicated weights), the
optimizer step (skipped everywhere on a non-finite gradient) and the learning-rate schedule.

Profiler ranges (``torch.profiler.record_function``, about 20 us each when no profiler runs, some
15 an iteration) name the parts of an iteration for ``tools/profile_train.py``: every network
call ``rcm/<network>/<jvp|grad|nograd>``, ``rcm/<network>/backward``, ``rcm/optimizer`` and
``rcm/ema``. The backward's kernels run on autograd's thread, inside the time of its range.
"""

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from torch.profiler import record_function

from ..losses.rcm import Denoisers, critic_loss, student_loss_terms
from ..parallel import current_device
from .optimizer import optimizer_step


def _all_ranks_ok(ok: torch.Tensor) -> bool:
    flag = ok.to(device=current_device(), dtype=torch.int32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class ProfiledDenoiser:
    """A denoiser whose network calls each run inside the profiler range ``rcm/<network>/<kind>``,
    kind "jvp", "grad" (a forward autograd records) or "nograd"; the objective sees a denoiser."""

    def __init__(self, denoiser, network):
        self.denoiser, self.network = denoiser, network

    def _range(self, kind=None):
        return record_function(f"rcm/{self.network}/{kind or ('grad' if torch.is_grad_enabled() else 'nograd')}")

    def predict(self, x_t, t, text):
        with self._range():
            return self.denoiser.predict(x_t, t, text)

    def x0(self, x_t, t, text):
        with self._range():
            return self.denoiser.x0(x_t, t, text)

    def predict_jvp(self, x_t, t, text, x_t_tangent, t_tangent):
        with self._range("jvp"):
            return self.denoiser.predict_jvp(x_t, t, text, x_t_tangent, t_tangent)

    def __getattr__(self, name):  # the rest of the denoiser (timestep_scale, net) as it is
        return getattr(self.denoiser, name)


def _update(net, terms, clip_grad, prefix):
    """Backward + step of one Trainable on the sum of ``terms`` ((loss, diagnostics) pairs, asked for
    one at a time); returns (diagnostics, the summed loss detached, metrics).

    Each term is backpropagated as soon as it is computed, so its graph is freed before the next
    term's forward: the gradients accumulate in megatron's fp32 main-grad buffers, which are reduced
    only by ``finalize_model_grads`` after the last term (no overlapped reduction). Whether the
    step is taken is decided after the last term, with one collective: a non-finite term, or no
    term with a graph, on any rank skips it everywhere, and the next update zeroes what the
    skipped one accumulated.
    """
    with record_function("rcm/optimizer"):
        net.ddp.zero_grad_buffer()
        net.optimizer.zero_grad()
    total = torch.zeros((), dtype=torch.float64, device=current_device())
    finite, graph, diagnostics = [], False, {}
    for loss, diag in terms:
        diagnostics.update(diag)
        total = total + loss.detach()
        finite.append(torch.isfinite(loss))
        if loss.requires_grad:
            graph = True
            # megatron's DDP divides by the data x context-parallel size, but the context-parallel ranks
            # hold partial sums of one loss's gradient: scale up by CP (as Megatron-LM's loss functions do)
            with record_function(f"rcm/{prefix}/backward"):
                (loss * parallel_state.get_context_parallel_world_size()).backward()
    ok = _all_ranks_ok(torch.stack(finite).all() if graph else torch.tensor(False))
    metrics = {f"{prefix}/skipped_nonfinite_loss": int(not ok), f"{prefix}/skipped_nonfinite_grad": 0,
               f"{prefix}/lr": net.optimizer.param_groups[0]["lr"], f"{prefix}/grad_norm": float("nan")}
    if not ok:
        return diagnostics, total, metrics
    with record_function("rcm/optimizer"):
        finalize_model_grads([net.ddp])
        updated, grad_norm = optimizer_step(net.optimizer, clip_grad)
        if updated:
            net.scheduler.step(increment=1)
    metrics[f"{prefix}/skipped_nonfinite_grad"] = int(not updated)
    metrics[f"{prefix}/grad_norm"] = grad_norm
    return diagnostics, total, metrics


def _denoisers(networks):
    return Denoisers(ProfiledDenoiser(networks.teacher, "teacher"),
                     ProfiledDenoiser(networks.student.denoiser, "student"),
                     ProfiledDenoiser(networks.fake_score.denoiser, "fake_score"),
                     ProfiledDenoiser(networks.dmd_teacher, "teacher"))


def student_step(networks, rcm, batch, noise, iteration, student_updates, clip_grad):
    """Student update on its rCM loss, one term's backward before the next term's forward
    (``student_loss_terms``), then the EMA update; returns (diagnostics, metrics)."""
    terms = student_loss_terms(_denoisers(networks), rcm, *batch, noise, iteration, student_updates)
    diagnostics, total, metrics = _update(networks.student, terms, clip_grad, "student")
    diagnostics["loss/student"] = total
    if not (metrics["student/skipped_nonfinite_loss"] or metrics["student/skipped_nonfinite_grad"]):
        with record_function("rcm/ema"):
            networks.ema.update(networks.student.module)
    return diagnostics, metrics


def fake_score_step(networks, rcm, batch, noise, critic_updates, clip_grad):
    """Fake-score (critic) update; returns (diagnostics, metrics)."""
    _, text = batch
    loss, diagnostics = critic_loss(_denoisers(networks), rcm, text, noise, critic_updates)
    diagnostics, _, metrics = _update(networks.fake_score, [(loss, diagnostics)], clip_grad, "fake_score")
    return diagnostics, metrics
