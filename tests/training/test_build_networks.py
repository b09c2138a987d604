"""``build_networks`` gives each network its own settings: the teacher frozen; student and fake score
trainable copies of its weights at their own learning rates (tiny_cpu.yaml sets both alike, so the
trainer runs cannot tell them apart); the sCM teacher guided at --guidance-scale and the DMD teacher
at --dmd-guidance-scale, both with the negative-prompt embedding; the EMA sharded over the data- and
context-parallel ranks."""

import torch

from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.training.arguments import load_config
from megatron_rcm.training.networks import build_networks

from .tiny_setup import make_inputs


def test_each_network_is_built_with_its_own_settings(tmp_path):
    inputs = make_inputs(tmp_path)
    flags = ["--train-iters", "8", "--lr", "3e-3", "--fake-score-lr", "5e-4", "--lr-warmup-iters", "0",
             "--guidance-scale", "4", "--dmd-guidance-scale", "2"]
    with parallel_context(ParallelConfig()):
        networks = build_networks(load_config([*inputs, *flags], world_size=1), torch.device("cpu"))
    scm_guided, dmd_guided = networks.teacher.net, networks.dmd_teacher.net
    assert (scm_guided.scale, dmd_guided.scale) == (4.0, 2.0) and scm_guided.net is dmd_guided.net
    negative = torch.load(inputs[inputs.index("--negative-prompt-embedding") + 1], weights_only=True)
    assert torch.equal(scm_guided.negative_embedding, negative) and torch.equal(dmd_guided.negative_embedding, negative)
    teacher = dict(scm_guided.net.named_parameters())
    assert teacher and not any(p.requires_grad for p in teacher.values())
    for net, lr in ((networks.student, 3e-3), (networks.fake_score, 5e-4)):
        assert [group["lr"] for group in net.optimizer.param_groups] == [lr, lr]
        trained = dict(net.module.named_parameters())
        assert trained.keys() == teacher.keys() and all(p.requires_grad for p in trained.values())
        assert all(torch.equal(p, teacher[n]) and p.data_ptr() != teacher[n].data_ptr() for n, p in trained.items())


def _ema_slices_at_cp2(inputs):
    with parallel_context(ParallelConfig(context_parallel_size=2)):
        networks = build_networks(load_config([*inputs, "--context-parallel-size", "2"], world_size=2),
                                  torch.device("cpu"))
        total = sum(p.numel() for p in networks.student.module.parameters())
        return networks.ema.world, networks.ema.shard_numel, total


def test_the_ema_is_sharded_over_the_context_parallel_ranks_too(tmp_path):
    """Context-parallel ranks hold the same student parameters, so each keeps half of the EMA at CP 2
    (the planner's memory and the 14B recipe count on it); a DP-only group would keep it whole on both."""
    from megatron_rcm.testing import run_distributed

    for world, shard, total in run_distributed(_ema_slices_at_cp2, world_size=2, args=(make_inputs(tmp_path),)):
        assert world == 2 and shard == -(-total // 2)
