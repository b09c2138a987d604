"""The random draws of one iteration, a function of (seed, iteration, global sample index) only.

Every sample of the global batch gets its own generator, so the noise does not depend on the
RNG state, on the tensor-, context- or data-parallel layout, or on where a run was resumed:
tensor- and context-parallel ranks of one replica draw the same numbers, and a resumed run at
another layout draws what the original run would have. Each sample draws the same fixed list
(whether or not this iteration uses every entry), so the streams never shift.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..diffusion.time_sampling import sample_time_dmd, sample_time_scm
from ..losses.config import RCMConfig
from ..losses.rcm import IterationNoise


def sample_generator(seed, iteration, index):
    state = np.random.SeedSequence([seed, iteration, index]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def draw_noise(seed, iteration, first_index, batch, latent_shape, rcm: RCMConfig, device, dtype):
    """Noise for the samples first_index .. first_index + batch - 1 of the global batch."""
    return to_device(draw_host_noise(seed, iteration, first_index, batch, latent_shape, rcm, dtype), device)


def draw_host_noise(seed, iteration, first_index, batch, latent_shape, rcm: RCMConfig, dtype, pin=False):
    """``draw_noise``'s draws in host memory (page-locked if ``pin``, for an asynchronous copy)."""
    per_sample = []
    for index in range(first_index, first_index + batch):
        g = sample_generator(seed, iteration, index)
        randn = lambda: torch.randn(latent_shape, generator=g)  # noqa: E731
        per_sample.append(dict(
            eps=randn(),
            t_scm=sample_time_scm(1, rcm.p_mean, rcm.p_std, generator=g),
            rollout=[randn() for _ in range(rcm.max_rollout_steps)],
            t_dmd=sample_time_dmd(1, rcm.dmd_shift, generator=g),
            eps_dmd=randn(),
        ))

    def stack(get, to_dtype):
        out = torch.stack([get(s) for s in per_sample]).to(to_dtype)
        return out.pin_memory() if pin else out

    return IterationNoise(
        eps=stack(lambda s: s["eps"], dtype),
        t_scm=stack(lambda s: s["t_scm"][0], torch.float64),
        rollout=[stack(lambda s: s["rollout"][i], dtype) for i in range(rcm.max_rollout_steps)],
        t_dmd=stack(lambda s: s["t_dmd"][0], torch.float64),
        eps_dmd=stack(lambda s: s["eps_dmd"], dtype),
    )


def to_device(noise: IterationNoise, device) -> IterationNoise:
    """The draws on ``device``; from page-locked memory the copies do not wait for the device."""
    def move(x):
        return x.to(device, non_blocking=x.is_pinned())

    return IterationNoise(move(noise.eps), move(noise.t_scm), [move(x) for x in noise.rollout], move(noise.t_dmd),
                          move(noise.eps_dmd))


class NoisePrefetcher:
    """``draw_noise`` with the next iteration's draws made on a host thread while this one trains.

    The draws take about 0.1 s of host time per 480p x 81 sample (CPU generators, so that the
    numbers do not depend on the device); drawn at the start of an iteration, the GPU would wait
    for them. ``draw`` returns exactly ``draw_noise``'s result for its arguments: the draws of the
    pending iteration when the arguments match, else drawn at once. Either way it then starts the
    draws of ``iteration + 1`` with the same other arguments. ``close`` stops the thread.
    """

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rcm-noise")
        self._pending = None  # (key, future)

    def draw(self, seed, iteration, first_index, batch, latent_shape, rcm: RCMConfig, device, dtype):
        device = torch.device(device)
        key = (seed, iteration, first_index, batch, tuple(latent_shape), rcm, device, dtype)
        pending, self._pending = self._pending, None
        host = pending[1].result() if pending and pending[0] == key else self._host(key)
        self._pending = (self._next(key), self._executor.submit(self._host, self._next(key)))
        return to_device(host, device)

    @staticmethod
    def _next(key):
        seed, iteration, *rest = key
        return (seed, iteration + 1, *rest)

    @staticmethod
    def _host(key):
        seed, iteration, first_index, batch, latent_shape, rcm, device, dtype = key
        if device.type != "cuda":
            return draw_host_noise(seed, iteration, first_index, batch, latent_shape, rcm, dtype)
        # the rank's GPU on this thread too (a new thread starts on GPU 0), as DataLoader's pinning thread does
        with torch.cuda.device(device):
            return draw_host_noise(seed, iteration, first_index, batch, latent_shape, rcm, dtype, pin=True)

    def close(self):
        self._executor.shutdown(wait=True, cancel_futures=True)
