"""One GPU (NCCL, megatron's DistributedOptimizer, --deterministic-mode): a run resumed with the
EMA slice and the teacher in pinned host memory (--offload-ema, --offload-teacher) gives the
straight run's losses and final EMA bit for bit, so the offloads change no number, and the EMA,
gathered to host memory for the checkpoint, loads back into a GPU run."""

import pytest
import torch

from .test_pretrain_rcm import _checkpoint_at, _final_ema, _run
from .tiny_setup import compared, make_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]


def test_a_resume_with_offloads_changes_no_number(tmp_path):
    inputs = make_inputs(tmp_path / "inputs")
    straight = _run(inputs, tmp_path / "straight", 1, "--deterministic-mode")
    _checkpoint_at(tmp_path / "straight" / "ckpt", 3, tmp_path / "offloaded" / "ckpt")
    resumed = _run(inputs, tmp_path / "offloaded", 1, "--deterministic-mode", "--offload-ema", "--offload-teacher")
    assert compared(resumed) == compared(straight[3:])
    ema, straight_ema = _final_ema(tmp_path / "offloaded"), _final_ema(tmp_path / "straight")
    assert ema.keys() == straight_ema.keys() and all(torch.equal(ema[k].cpu(), straight_ema[k].cpu()) for k in ema)


def test_the_offloaded_teacher_is_on_the_gpu_only_during_its_calls():
    """``HostResident`` (--offload-teacher): weights in pinned host memory between calls, on the GPU
    during one, and the call's result equals the same network's kept on the GPU. A copy left behind
    after the call would change no number, so the numbers above cannot show it."""
    from megatron_rcm.training.offload import HostResident

    g = torch.Generator().manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Linear(48, 40), torch.nn.GELU(), torch.nn.Linear(40, 24))
    on_gpu = {k: v.cuda() for k, v in net.state_dict().items()}
    x = torch.randn(5, 48, generator=g).cuda()
    during = []
    net.register_forward_hook(lambda module, args, out: during.extend(p.device.type for p in module.parameters()))
    offloaded = HostResident(net, "cuda")
    assert all(p.device.type == "cpu" and p.is_pinned() for p in net.parameters())
    out = offloaded(x)
    assert during and set(during) == {"cuda"}
    assert all(p.device.type == "cpu" and p.is_pinned() for p in net.parameters())
    assert torch.equal(out, torch.func.functional_call(net, on_gpu, (x,)))
