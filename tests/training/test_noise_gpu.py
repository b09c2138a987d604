"""The noise prefetch on a GPU: page-locked draws copied without waiting, equal to ``draw_noise``,
drawn on a thread that uses the rank's GPU (not GPU 0 by default; that part needs two GPUs)."""

import threading

import pytest
import torch

from megatron_rcm.losses.config import RCMConfig
from megatron_rcm.training import noise as noise_module
from megatron_rcm.training.noise import NoisePrefetcher, draw_noise

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]

SHAPE = (16, 3, 30, 52)
RCM = RCMConfig(max_rollout_steps=4)


def test_prefetched_draws_on_the_gpu_equal_draw_noise_and_use_the_ranks_gpu(monkeypatch):
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    seen = []
    host = noise_module.draw_host_noise

    def recording(*args, **kwargs):
        out = host(*args, **kwargs)
        if threading.current_thread() is not threading.main_thread():
            seen.append((torch.cuda.current_device(), out.eps.is_pinned()))
        return out

    monkeypatch.setattr(noise_module, "draw_host_noise", recording)
    prefetcher = NoisePrefetcher()
    try:
        for iteration in (3, 4, 5):
            got = prefetcher.draw(7, iteration, 2, 2, SHAPE, RCM, device, torch.bfloat16)
            want = draw_noise(7, iteration, 2, 2, SHAPE, RCM, device, torch.bfloat16)
            for a, b in zip([got.eps, got.t_scm, *got.rollout, got.t_dmd, got.eps_dmd],
                            [want.eps, want.t_scm, *want.rollout, want.t_dmd, want.eps_dmd], strict=True):
                assert a.device == device and a.dtype == b.dtype
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    finally:
        prefetcher.close()
    assert seen and all(pinned for _, pinned in seen[:2]), seen
    if device.index > 0:  # with one GPU, the rank's GPU and the default one are the same
        assert all(d == device.index for d, _ in seen[:2]), seen
