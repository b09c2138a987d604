"""The student update backpropagates each loss term before the next is computed
(``losses.rcm.student_loss_terms``): the same gradient as one backward of the summed loss, one
student graph alive at a time, and a non-finite term still skips the whole step."""

import weakref

import torch

from megatron_rcm.losses.rcm import student_loss, student_loss_terms
from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.training.arguments import load_config
from megatron_rcm.training.networks import build_networks
from megatron_rcm.training.noise import draw_noise
from megatron_rcm.training.step import _denoisers, _update, student_step

from .tiny_setup import LATENT, TEXT_LEN, make_inputs

ITERATION = 4  # past the tangent warm-up, so the loss has its sCM and its DMD term


class _Saved:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


class SavedTensors:
    """Every tensor autograd saves for a backward, alive until its graph is freed."""

    def __init__(self):
        self.alive = weakref.WeakSet()

    def pack(self, tensor):
        saved = _Saved(tensor)
        self.alive.add(saved)
        return saved

    @staticmethod
    def unpack(saved):
        return saved.tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


class RecordingDenoiser:
    """The student's denoiser, recording how many saved tensors are alive when a call with grad starts."""

    def __init__(self, denoiser, saved):
        self.denoiser, self.saved, self.alive_at_grad_calls = denoiser, saved, []

    def _record(self):
        if torch.is_grad_enabled():
            self.alive_at_grad_calls.append(len(self.saved.alive))

    def predict(self, *args):
        self._record()
        return self.denoiser.predict(*args)

    def x0(self, *args):
        self._record()
        return self.denoiser.x0(*args)

    def __getattr__(self, name):
        return getattr(self.denoiser, name)


def _setup(tmp_path):
    # no warm-up: the first update's learning rate is not 0, so a taken step moves the weights
    flags = ["--train-iters", "8", "--clip-grad", "0", "--lr-warmup-iters", "0"]
    config = load_config(make_inputs(tmp_path) + flags, world_size=1)
    networks = build_networks(config, torch.device("cpu"))
    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(2, networks.student.module.config.in_channels, *LATENT, generator=g)
    text = torch.randn(2, TEXT_LEN, networks.student.module.config.text_dim, generator=g)
    noise = draw_noise(config.seed, ITERATION, 0, 2, x0.shape[1:], config.rcm, torch.device("cpu"), torch.float32)
    assert config.rcm.scm_weight > 0 and config.rcm.uses_dmd(ITERATION)
    return config, networks, (x0, text), noise


def _main_grads(networks):
    return {n: p.main_grad.clone() for n, p in networks.student.module.named_parameters()}


def _assert_same_sum(split, joint, name):
    """The two terms' contributions summed in another order: equal up to a few float32 roundings."""
    assert (split - joint).abs().max() <= 4 * torch.finfo(torch.float32).eps * joint.abs().max(), name


def _joint_gradient(networks, config, batch, noise):
    """One backward of ``student_loss`` (both graphs alive), into megatron's main-grad buffers."""
    networks.student.ddp.zero_grad_buffer()
    loss, _ = student_loss(_denoisers(networks), config.rcm, *batch, noise, ITERATION, student_updates=1)
    loss.backward()
    return loss.detach(), _main_grads(networks)


def test_the_update_backpropagates_the_summed_loss_one_graph_at_a_time(tmp_path):
    with parallel_context(ParallelConfig()):
        torch.manual_seed(0)
        config, networks, batch, noise = _setup(tmp_path)
        saved = SavedTensors()
        student = networks.student.denoiser
        networks.student.denoiser = RecordingDenoiser(student, saved)
        with saved.hooks():
            joint_loss, joint = _joint_gradient(networks, config, batch, noise)
        joint_alive = networks.student.denoiser.alive_at_grad_calls
        before = {n: p.detach().clone() for n, p in networks.student.module.named_parameters()}
        networks.student.denoiser = RecordingDenoiser(student, saved)
        with saved.hooks():
            diagnostics, metrics = student_step(networks, config.rcm, batch, noise, ITERATION, student_updates=1,
                                                clip_grad=0.0)
        split_alive = networks.student.denoiser.alive_at_grad_calls
        split = _main_grads(networks)  # the optimizer reads these buffers and leaves them
    assert metrics["student/skipped_nonfinite_loss"] == metrics["student/skipped_nonfinite_grad"] == 0
    assert torch.equal(diagnostics["loss/student"], joint_loss)
    for name, g in joint.items():
        assert g.abs().sum() > 0, name
        _assert_same_sum(split[name], g, name)
    assert any(not torch.equal(p, before[n]) for n, p in networks.student.module.named_parameters())
    # the sCM pass and the rollout's last step: two calls with grad each time; the joint backward
    # still holds the first graph when the second starts, the update has freed it
    assert len(joint_alive) == len(split_alive) == 2
    assert joint_alive[0] == split_alive[0] == 0 and joint_alive[1] > 0
    assert split_alive[1] == 0


def test_a_non_finite_later_term_skips_the_step_and_leaves_nothing_for_the_next(tmp_path):
    with parallel_context(ParallelConfig()):
        torch.manual_seed(0)
        config, networks, batch, noise = _setup(tmp_path)
        before = {n: p.detach().clone() for n, p in networks.student.module.named_parameters()}

        def terms(dmd_factor):  # the real terms, one at a time as the trainer asks, the DMD one scaled
            for loss, diag in student_loss_terms(_denoisers(networks), config.rcm, *batch, noise, ITERATION, 1):
                yield (loss * dmd_factor if "loss/dmd" in diag else loss), diag

        diagnostics, _, metrics = _update(networks.student, terms(float("inf")), 0.0, "student")
        assert metrics["student/skipped_nonfinite_loss"] == 1 and "loss/dmd" in diagnostics
        assert all(torch.equal(p, before[n]) for n, p in networks.student.module.named_parameters())
        # the buffers now hold the joint gradient (after the skipped update's non-finite one): the
        # next update must start from zero to equal it
        _, joint = _joint_gradient(networks, config, batch, noise)
        _, _, metrics = _update(networks.student, terms(1.0), 0.0, "student")
        split = _main_grads(networks)
    assert metrics["student/skipped_nonfinite_loss"] == metrics["student/skipped_nonfinite_grad"] == 0
    for name, g in joint.items():
        _assert_same_sum(split[name], g, name)

