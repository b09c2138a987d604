"""After megatron's DistributedOptimizer (no Apex/TE) loads a checkpoint, every parameter's Adam
state holds the same 'step' tensor; torch's foreach AdamW then increments it once per parameter.
``unshare_steps`` must make the first step after a resume equal the straight run's.

On CUDA, ``fuse_adam`` moves torch's AdamW to its fused kernel: its updates must match a float64
AdamW to fp32 rounding, and a resume through it must repeat the straight run."""

import copy

import pytest
import torch

from megatron_rcm.training.optimizer import fuse_adam, unshare_steps


def _params(seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 3, generator=g, dtype=dtype).to(device)) for _ in range(4)]


def _step(optimizer, params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)
    optimizer.step()


def _adamw(params, **kwargs):
    return torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1, **kwargs)


def _resumed_like_megatron(state_dict, params, unshare=unshare_steps):
    optimizer = _adamw(params, foreach=True)
    optimizer.load_state_dict(state_dict)
    shared = torch.tensor(float(next(iter(optimizer.state.values()))["step"]))
    for state in optimizer.state.values():
        state["step"] = shared  # what DistributedOptimizer.load_state_dict leaves
    if unshare:
        unshare(optimizer)
    return optimizer


@pytest.mark.parametrize("unshare", [True, False])
def test_first_step_after_resume_matches_straight_run(unshare):
    straight = _params(0)
    optimizer = _adamw(straight, foreach=True)
    for i in range(3):
        _step(optimizer, straight, i)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in straight]
    resumed_optimizer = _resumed_like_megatron(copy.deepcopy(optimizer.state_dict()), resumed,
                                               unshare_steps if unshare else None)
    _step(optimizer, straight, 3)
    _step(resumed_optimizer, resumed, 3)
    error = max((a - b).abs().max().item() for a, b in zip(straight, resumed))
    steps = [float(s["step"]) for s in resumed_optimizer.state.values()]
    if unshare:
        assert error == 0.0 and steps == [4.0] * 4
    else:  # the failure the helper exists for: one shared step counted 4 times
        assert error > 1e-6 and steps == [7.0] * 4


def test_fuse_adam_keeps_host_parameters_on_their_kernel():
    optimizer = _adamw(_params(0), foreach=True)
    _step(optimizer, optimizer.param_groups[0]["params"], 0)
    fuse_adam(optimizer)
    assert not optimizer.param_groups[0]["fused"] and optimizer.param_groups[0]["foreach"]
    assert all(s["step"].device.type == "cpu" for s in optimizer.state.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fused_adam_matches_float64_and_resumes_exactly():
    reference = _params(1)  # float64 on the host: the oracle
    reference_optimizer = _adamw(reference, foreach=False)
    fused = _params(1, torch.float32, "cuda")
    optimizer = _adamw(fused, foreach=True)
    fuse_adam(optimizer)
    for i in range(3):
        _step(reference_optimizer, reference, i)
        _step(optimizer, fused, i)
    assert optimizer.param_groups[0]["fused"]
    assert all(s["step"].is_cuda and float(s["step"]) == 3.0 for s in optimizer.state.values())
    error = max((a.double().cpu() - b).abs().max().item() for a, b in zip(fused, reference))
    assert 0.0 < error < 1e-5  # fp32 rounding, not another update rule

    # a resume that leaves one shared host step tensor, as megatron's loader does, then fuse_adam
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in fused]
    resumed_optimizer = _resumed_like_megatron(copy.deepcopy(optimizer.state_dict()), resumed, fuse_adam)
    _step(optimizer, fused, 3)
    _step(resumed_optimizer, resumed, 3)
    assert resumed_optimizer.param_groups[0]["fused"]
    assert all(torch.equal(a, b) for a, b in zip(fused, resumed))
    assert [float(s["step"]) for s in resumed_optimizer.state.values()] == [4.0] * 4
