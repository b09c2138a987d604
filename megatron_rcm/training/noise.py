"""The random draws of one iteration, a function of (seed, iteration, global sample index) only.

Every sample of the global batch gets its own generator, so the noise does not depend on the
RNG state, on the tensor-, context- or data-parallel layout, or on where a run was resumed:
tensor- and context-parallel ranks of one replica draw the same numbers, and a resumed run at
another layout draws what the original run would have. Each sample draws the same fixed list
(whether or not this iteration uses every entry), so the streams never shift.
"""

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
        return torch.stack([get(s) for s in per_sample]).to(device=device, dtype=to_dtype)

    return IterationNoise(
        eps=stack(lambda s: s["eps"], dtype),
        t_scm=stack(lambda s: s["t_scm"][0], torch.float64),
        rollout=[stack(lambda s: s["rollout"][i], dtype) for i in range(rcm.max_rollout_steps)],
        t_dmd=stack(lambda s: s["t_dmd"][0], torch.float64),
        eps_dmd=stack(lambda s: s["eps_dmd"], dtype),
    )
