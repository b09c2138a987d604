"""The iteration's random draws: a function of (seed, iteration, sample index) only, and the same
whether drawn at once or ahead of time on the prefetch thread."""

import collections
import threading

import torch

from megatron_rcm.losses.config import RCMConfig
from megatron_rcm.training import noise as noise_module
from megatron_rcm.training.noise import NoisePrefetcher, draw_noise

SHAPE = (4, 3, 6, 8)
RCM = RCMConfig(max_rollout_steps=3)


def _flat(noise):
    return [noise.eps, noise.t_scm, *noise.rollout, noise.t_dmd, noise.eps_dmd]


def _assert_same(a, b):
    for x, y in zip(_flat(a), _flat(b), strict=True):
        assert x.dtype == y.dtype and x.device == y.device
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_a_sample_draws_the_same_whatever_the_split_of_the_batch():
    whole = draw_noise(11, 7, 0, 4, SHAPE, RCM, "cpu", torch.float32)
    halves = [draw_noise(11, 7, first, 2, SHAPE, RCM, "cpu", torch.float32) for first in (0, 2)]
    for x, a, b in zip(_flat(whole), _flat(halves[0]), _flat(halves[1]), strict=True):
        torch.testing.assert_close(x, torch.cat([a, b]), rtol=0, atol=0)
    other = draw_noise(11, 8, 0, 4, SHAPE, RCM, "cpu", torch.float32)
    assert not torch.equal(whole.eps, other.eps) and whole.eps.std() > 0.5


def test_bfloat16_draws_are_the_float32_draws_rounded():
    exact = draw_noise(3, 1, 5, 2, SHAPE, RCM, "cpu", torch.float32)
    rounded = draw_noise(3, 1, 5, 2, SHAPE, RCM, "cpu", torch.bfloat16)
    torch.testing.assert_close(rounded.eps, exact.eps.bfloat16(), rtol=0, atol=0)
    assert rounded.t_scm.dtype == torch.float64 and torch.equal(rounded.t_scm, exact.t_scm)


def test_the_prefetcher_returns_draw_noise_and_draws_the_next_iteration_on_its_thread(monkeypatch):
    threads = []
    host = noise_module.draw_host_noise

    def recording(seed, iteration, *args, **kwargs):
        threads.append((iteration, threading.current_thread() is threading.main_thread()))
        return host(seed, iteration, *args, **kwargs)

    monkeypatch.setattr(noise_module, "draw_host_noise", recording)
    prefetcher = NoisePrefetcher()
    try:
        for iteration in (5, 6, 7):
            _assert_same(prefetcher.draw(2, iteration, 1, 2, SHAPE, RCM, "cpu", torch.float32),
                         draw_noise(2, iteration, 1, 2, SHAPE, RCM, "cpu", torch.float32))
        # a request the pending draws do not match (a skipped-ahead iteration, another shape) is drawn at once
        _assert_same(prefetcher.draw(2, 10, 1, 2, (4, 3, 6, 4), RCM, "cpu", torch.float32),
                     draw_noise(2, 10, 1, 2, (4, 3, 6, 4), RCM, "cpu", torch.float32))
    finally:
        prefetcher.close()
    calls = collections.Counter(threads)  # (iteration, on the main thread): draws
    # draw_noise's own draws are on the main thread; the prefetcher drew 5 and 10 at once and 6 and 7
    # ahead (whether the draws of 8 and 11 began before they were dropped depends on timing)
    assert [calls[(i, True)] for i in (5, 6, 7, 10)] == [2, 1, 1, 2]
    assert [calls[(i, False)] for i in (5, 6, 7, 10)] == [0, 1, 1, 0]
