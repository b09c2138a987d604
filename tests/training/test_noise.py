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


def test_each_draw_is_its_own_with_its_distribution():
    """Every field is a separate draw (noises uncorrelated with one another, no rollout noise
    reused), t_scm follows p_G (eq. 3.5) and t_dmd p_D (eq. 4.5), over 2000 samples."""
    rcm = RCMConfig(max_rollout_steps=4, p_mean=0.3, p_std=1.2, dmd_shift=4.0)
    n = 2000
    noise = draw_noise(5, 3, 0, n, (3,), rcm, "cpu", torch.float64)
    fields = [noise.eps, *noise.rollout, noise.eps_dmd]
    bound = 5 / (3 * n) ** 0.5  # five standard errors of a correlation or a mean of 3n standard normals
    for i, a in enumerate(fields):
        assert abs(a.mean()) < bound and abs(a.std() - 1) < bound
        for b in fields[i + 1:]:
            assert abs(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) < bound
    log_sigma = torch.log(torch.tan(noise.t_scm))
    assert abs(log_sigma.mean() - 0.3) < 5 * 1.2 / n**0.5 and abs(log_sigma.std() - 1.2) < 5 * 1.2 / (2 * n) ** 0.5
    s = torch.sin(noise.t_dmd) / (torch.cos(noise.t_dmd) + torch.sin(noise.t_dmd))
    u = (s / (4.0 - 3.0 * s)).sort().values  # the inverse of the shift: U[0, 1)
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert (u - grid).abs().max() < 1.95 / n**0.5  # Kolmogorov-Smirnov at 0.1%
