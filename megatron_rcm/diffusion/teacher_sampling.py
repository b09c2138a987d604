"""The teacher's ODE samplers in RF time: Euler and UniPC (bh2, x0-prediction, order 2).

Both take an RF velocity network with the model families' interface (timestep = its
``TIMESTEP_SCALE`` x RF time); wrap it in ClassifierFreeGuidance for CFG
(docs/math.md section 6: 50 steps, shift, CFG 5 is the teacher baseline).
"""

import math

import torch

from megatron_rcm.diffusion.time import shift_rf, timestep_scale

# UniPC works in lambda = log((1 - s) / s), which is -inf at s = 1; it starts just below (as
# diffusers' flow UniPC does). The error of starting from pure noise there is O(1e-6).
_UNIPC_MAX_TIME = 1.0 - 1e-6


def rf_sampling_times(num_steps: int, shift: float = 1.0) -> list:
    """RF times shift(linspace(1, 0, num_steps + 1), k) (eq. 1.2), from pure noise to data."""
    if num_steps < 1:
        raise ValueError(f"a sampler needs at least one step, got {num_steps}")
    s = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    return shift_rf(s, shift).tolist()


def _velocity(net, x, s, text):
    timestep = torch.full((x.shape[0],), timestep_scale(net) * s, dtype=x.dtype, device=x.device)
    return net(x, timestep, text)


@torch.no_grad()
def sample_rf_euler(net, noise: torch.Tensor, text: torch.Tensor, num_steps: int,
                    shift: float = 1.0) -> torch.Tensor:
    """Euler on dx/ds = v from s = 1 (x = noise) to s = 0: x <- x + (s_next - s) v(x, s)."""
    times = rf_sampling_times(num_steps, shift)
    x = noise
    for s, s_next in zip(times, times[1:]):
        x = x + (s_next - s) * _velocity(net, x, s, text)
    return x


def _log_snr(s: float) -> float:
    return math.inf if s == 0 else math.log1p(-s) - math.log(s)


def _unipc_predict(x, s, s_next, x0, x0_history, order):
    """UniP-bh2 step from s to s_next given the x0 predictions at s (and the step before)."""
    h = _log_snr(s_next) - _log_snr(s)
    b_h = math.expm1(-h)
    x_next = (s_next / s) * x - (1 - s_next) * b_h * x0
    if order == 2:
        s_prev, x0_prev = x0_history
        r = (_log_snr(s_prev) - _log_snr(s)) / h
        x_next = x_next - (1 - s_next) * b_h * 0.5 * (x0_prev - x0) / r
    return x_next


def _unipc_correct(x_prev, s_prev, s, x0_prev, x0, x0_history, order):
    """UniC-bh2 correction of the sample at s, predicted from x_prev at s_prev with given order."""
    h = _log_snr(s) - _log_snr(s_prev)
    hh = -h
    b_h = math.expm1(hh)
    x_corrected = (s / s_prev) * x_prev - (1 - s) * b_h * x0_prev
    if order == 1:
        return x_corrected - (1 - s) * b_h * 0.5 * (x0 - x0_prev)
    s_prev2, x0_prev2 = x0_history
    r = (_log_snr(s_prev2) - _log_snr(s_prev)) / h
    # rho solves R rho = b with R = [[1, 1], [r, 1]], b_k = k! phi_{k+1}(hh) hh / B(h) (UniPC, bh2).
    phi_2 = math.expm1(hh) / hh - 1
    phi_3 = phi_2 / hh - 0.5
    b = torch.tensor([phi_2 / b_h, 2 * phi_3 / b_h], dtype=torch.float64)
    rho = torch.linalg.solve(torch.tensor([[1.0, 1.0], [r, 1.0]], dtype=torch.float64), b).tolist()
    return x_corrected - (1 - s) * b_h * (rho[0] * (x0_prev2 - x0_prev) / r + rho[1] * (x0 - x0_prev))


@torch.no_grad()
def sample_rf_unipc(net, noise: torch.Tensor, text: torch.Tensor, num_steps: int,
                    shift: float = 1.0) -> torch.Tensor:
    """UniPC (Zhao et al. 2023), bh2, x0-prediction, order 2 with a corrector at every step.

    The same update as diffusers' UniPCMultistepScheduler(solver_order=2, prediction_type=
    "flow_prediction", use_flow_sigmas=True, lower_order_final=True) on these RF times, which is
    what the Wan teacher samples with. x0 = x - s v.
    """
    times = rf_sampling_times(num_steps, shift)
    times[0] = min(times[0], _UNIPC_MAX_TIME)
    x = noise
    history = []  # (s, x0) of the earlier steps, newest last
    previous = None  # (x before the last predictor step, its order)
    for i, (s, s_next) in enumerate(zip(times, times[1:])):
        x0 = x - s * _velocity(net, x, s, text)
        if previous is not None:
            x_prev, order_prev = previous
            s_prev, x0_prev = history[-1]
            x = _unipc_correct(x_prev, s_prev, s, x0_prev, x0, history[-2] if order_prev == 2 else None,
                               order_prev)
        order = min(2, num_steps - i, len(history) + 1)
        previous = (x, order)
        x = _unipc_predict(x, s, s_next, x0, history[-1] if order == 2 else None, order)
        history = [*history[-1:], (s, x0)]
    return x
