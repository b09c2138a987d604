"""The student update backpropagates each loss term before the next is computed
(``losses.rcm.student_loss_terms``): the same gradient as one backward of the summed loss, one
student graph alive at a time, and a non-finite term still skips the whole step."""

import weakref

import torch

from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.diffusion.guidance import ClassifierFreeGuidance
from megatron_rcm.losses.rcm import Denoisers, student_loss, student_loss_terms
from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.training.arguments import load_config
from megatron_rcm.training.networks import build_networks
from megatron_rcm.training import step
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


def _setup(tmp_path, *extra):
    # no warm-up: the first update's learning rate is not 0, so a taken step moves the weights
    flags = ["--train-iters", "8", "--clip-grad", "0", "--lr-warmup-iters", "0", *extra]
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


def _student_state(networks):
    """What a taken student step changes: the weights, the EMA and its count, the schedule's step count."""
    weights = {n: p.detach().clone() for n, p in networks.student.module.named_parameters()}
    return weights, networks.ema.full_tensors(), networks.ema.num_updates, networks.student.scheduler.num_steps


def _same_tensors(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_step_without_a_graph_or_with_a_non_finite_gradient_moves_nothing(tmp_path, monkeypatch):
    """A loss without a graph (no finite sCM sample, DMD off) and a finite loss whose gradient is not
    finite both skip the step: the weights, the EMA and the learning-rate schedule stay as they
    were. A healthy loss then moves all of them."""
    with parallel_context(ParallelConfig()):
        torch.manual_seed(0)
        config, networks, batch, noise = _setup(tmp_path)
        weight = next(networks.student.module.parameters())

        def step_on(loss):
            monkeypatch.setattr(step, "student_loss_terms", lambda *args: iter([(loss(weight), {})]))
            return student_step(networks, config.rcm, batch, noise, ITERATION, student_updates=1, clip_grad=0.0)[1]

        before = _student_state(networks)
        no_graph = step_on(lambda p: torch.zeros((), dtype=torch.float64))
        nan_gradient = step_on(lambda p: (p - p.detach()).pow(2).sum().sqrt())  # 0, with gradient 0 / 0
        skipped = _student_state(networks)
        healthy = step_on(lambda p: p.double().pow(2).sum())
        after = _student_state(networks)
    assert no_graph["student/skipped_nonfinite_loss"] == 1
    assert nan_gradient["student/skipped_nonfinite_loss"] == 0 and nan_gradient["student/skipped_nonfinite_grad"] == 1
    assert _same_tensors(skipped[0], before[0]) and _same_tensors(skipped[1], before[1])
    assert skipped[2:] == before[2:]
    assert healthy["student/skipped_nonfinite_loss"] == healthy["student/skipped_nonfinite_grad"] == 0
    assert not _same_tensors(after[0], before[0]) and not _same_tensors(after[1], before[1])
    assert after[2:] == (before[2] + 1, before[3] + 1)


def test_the_dmd_term_of_a_step_guides_the_teacher_at_the_dmd_scale(tmp_path):
    """With --dmd-guidance-scale the step's DMD direction uses the teacher guided at that scale (eq. 4.2),
    rebuilt here from the teacher module and the negative embedding; at the sCM scale it would differ."""
    with parallel_context(ParallelConfig()):
        torch.manual_seed(0)
        config, networks, batch, noise = _setup(tmp_path, "--dmd-guidance-scale", "7.5")
        guided = networks.teacher.net
        assert config.rcm.guidance_scale != 7.5

        def dmd_at(scale):
            real_score = TrigFlowDenoiser(ClassifierFreeGuidance(guided.net, guided.negative_embedding, scale))
            denoisers = Denoisers(networks.teacher, networks.student.denoiser, networks.fake_score.denoiser, real_score)
            _, diagnostics = student_loss(denoisers, config.rcm, *batch, noise, ITERATION, student_updates=1)
            return diagnostics["loss/dmd"]

        expected, at_the_scm_scale = dmd_at(7.5), dmd_at(config.rcm.guidance_scale)
        diagnostics, _ = student_step(networks, config.rcm, batch, noise, ITERATION, student_updates=1, clip_grad=0.0)
    assert (expected - at_the_scm_scale).abs() > 1e-6 * expected.abs()
    torch.testing.assert_close(diagnostics["loss/dmd"], expected, rtol=1e-12, atol=0)
