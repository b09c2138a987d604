"""After megatron's DistributedOptimizer (no Apex/TE) loads a checkpoint, every parameter's Adam
state holds the same 'step' tensor; torch's foreach AdamW then increments it once per parameter.
``unshare_steps`` must make the first step after a resume equal the straight run's."""

import copy

import pytest
import torch

from megatron_rcm.training.optimizer import unshare_steps


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 3, generator=g, dtype=torch.float64)) for _ in range(4)]


def _step(optimizer, params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    optimizer.step()


def _resumed_like_megatron(state_dict, params, unshare):
    optimizer = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), foreach=True)
    optimizer.load_state_dict(state_dict)
    shared = torch.tensor(float(next(iter(optimizer.state.values()))["step"]))
    for state in optimizer.state.values():
        state["step"] = shared  # what DistributedOptimizer.load_state_dict leaves
    if unshare:
        unshare_steps(optimizer)
    return optimizer


@pytest.mark.parametrize("unshare", [True, False])
def test_first_step_after_resume_matches_straight_run(unshare):
    straight = _params(0)
    optimizer = torch.optim.AdamW(straight, lr=1e-2, betas=(0.9, 0.999), foreach=True)
    for i in range(3):
        _step(optimizer, straight, i)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in straight]
    resumed_optimizer = _resumed_like_megatron(copy.deepcopy(optimizer.state_dict()), resumed, unshare)
    _step(optimizer, straight, 3)
    _step(resumed_optimizer, resumed, 3)
    error = max((a - b).abs().max().item() for a, b in zip(straight, resumed))
    steps = [float(s["step"]) for s in resumed_optimizer.state.values()]
    if unshare:
        assert error == 0.0 and steps == [4.0] * 4
    else:  # the failure the helper exists for: one shared step counted 4 times
        assert error > 1e-6 and steps == [7.0] * 4
