"""The rCM few-step sampler (eq. 6.1) in the terms of a flow-matching scheduler.

TrigFlow x_t = cos t x0 + sin t eps is the RF sample x_s = (1 - s) x0 + s eps scaled by
c = cos t + sin t, with s = sin t / c. The denoiser shows the network x_t / c at timestep 1000 s
and returns x0 = x_s - s v; the next step x_{t'} = cos t' x0 + sin t' eps' is, divided by c',
(1 - s') x0 + s' eps'. That is one step of diffusers' ``FlowMatchEulerDiscreteScheduler`` with
``stochastic_sampling=True`` at sigmas s_i, so the sampler is that scheduler at these sigmas,
started from the RF sample eps / c_0 (x = eps at t_0 < pi/2 is not pure noise in RF terms).
"""

from typing import NamedTuple, Sequence

import torch

from .few_step import DEFAULT_MID_TIMES, few_step_times
from .time import sigma_to_trigflow


class FlowMatchingSchedule(NamedTuple):
    sigmas: list
    """RF times s_i of the steps (the terminal 0 left out, as diffusers appends it)."""
    timesteps: list
    """1000 s_i, computed as ``TrigFlowDenoiser`` computes the network's timestep."""
    initial_scale: float
    """c_0 = cos t_0 + sin t_0: the first RF sample is the initial noise divided by c_0."""


def flow_matching_schedule(num_steps: int, sigma_max: float,
                           mid_times: Sequence[float] = DEFAULT_MID_TIMES) -> FlowMatchingSchedule:
    """The few-step sampler's times ``few_step_times(num_steps, arctan(sigma_max), mid_times)`` as
    flow-matching sigmas and timesteps."""
    times = torch.tensor(few_step_times(num_steps, sigma_to_trigflow(sigma_max), mid_times)[:-1],
                         dtype=torch.float64)
    sin, c = torch.sin(times), torch.cos(times) + torch.sin(times)
    return FlowMatchingSchedule((sin / c).tolist(), (1000 * sin / c).tolist(), c[0].item())
