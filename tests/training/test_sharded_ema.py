"""The sharded power EMA equals the unsharded one bit for bit, keeps 1/(DP x CP) of it per rank
(the planner's count), offloaded or not, and its full tensors reload at another data-parallel size."""

import pytest
import torch
from megatron.core import parallel_state

from megatron_rcm.models.wan import WanModel, wan_config
from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.planning import Layout, Workload, state_bytes
from megatron_rcm.testing import run_distributed
from megatron_rcm.training.ema import PowerEMA, ShardedPowerEMA

PRESET, UPDATES, RELATIVE_STD = "tiny-b", 3, 0.1


def _model_and_ema(parallel, offload=False):
    torch.manual_seed(0)  # the same weights on every rank
    config = wan_config(PRESET, use_cpu_initialization=True, context_parallel_size=parallel.context_parallel_size)
    model = WanModel(config)
    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    return model, ShardedPowerEMA(model, RELATIVE_STD, group, offload=offload)


def _train(parallel, offload):
    """UPDATES random steps of the weights (the same on every rank), each followed by the sharded
    and the unsharded EMA update."""
    with parallel_context(parallel):
        model, ema = _model_and_ema(parallel, offload)
        reference = PowerEMA(model, RELATIVE_STD)
        generator = torch.Generator().manual_seed(1)
        for _ in range(UPDATES):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=generator))
            ema.update(model)
            reference.update(model)
        return dict(full=ema.full_tensors(), reference=reference.shadow, shard=ema.shard.clone(),
                    shard_bytes=ema.shard.numel() * ema.shard.element_size())


def _reload(full):
    with parallel_context(ParallelConfig()):
        _, ema = _model_and_ema(ParallelConfig())
        ema.load_full_tensors(full)
        return ema.full_tensors(), ema.shard.clone()


@pytest.fixture(scope="module")
def dp2_offloaded():
    return run_distributed(_train, world_size=2, args=(ParallelConfig(), True))


def _check(ranks, layout):
    expected_bytes = state_bytes(Workload(PRESET).config(), layout)["ema"]["parameters"]
    for rank in ranks:
        assert rank["full"].keys() == rank["reference"].keys()
        assert all(torch.equal(rank["full"][k], rank["reference"][k]) for k in rank["full"])
        assert rank["shard_bytes"] == expected_bytes


def test_sharded_ema_equals_the_unsharded_one_over_data_parallel_ranks(dp2_offloaded):
    _check(dp2_offloaded, Layout(dp=2, offload_ema=True))


def test_sharded_ema_equals_the_unsharded_one_over_context_parallel_ranks():
    _check(run_distributed(_train, world_size=2, args=(ParallelConfig(context_parallel_size=2), False)),
           Layout(cp=2))


def test_full_tensors_reload_at_another_data_parallel_size(dp2_offloaded):
    full = dp2_offloaded[0]["full"]
    halves = torch.cat([rank["shard"] for rank in dp2_offloaded])
    [(reloaded, whole)] = run_distributed(_reload, world_size=1, args=(full,))
    assert all(torch.equal(reloaded[k], full[k]) for k in full)
    assert torch.equal(whole, halves[:whole.numel()])  # one rank holds what two held, end to end
    for rank, (again, shard) in zip(dp2_offloaded, run_distributed(_reload, world_size=2, args=(reloaded,))):
        assert torch.equal(shard, rank["shard"])
        assert all(torch.equal(again[k], full[k]) for k in full)


def _power_average(thetas, gamma):
    """The power EMA in closed form (EDM2): after updates 0..k it weighs theta_j by
    ((j + 1)^p - j^p) / (k + 1)^p, p = gamma + 1 -- the recursion of eq. 5.1 unrolled."""
    p, k = gamma + 1, len(thetas) - 1
    return sum(((j + 1) ** p - j**p) / (k + 1) ** p * theta for j, theta in enumerate(thetas))


def _updates(model, emas, count, generator):
    """``count`` fresh random weights, each followed by every EMA's update; yields the float64 weights so far."""
    thetas = []
    for _ in range(count):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
        thetas.append({n: p.detach().double().clone() for n, p in model.named_parameters()})
        for ema in emas:
            ema.update(model)
        yield thetas


def test_every_update_gives_the_closed_form_power_average():
    """The first update copies the weights it is given (not those at construction), later ones weigh
    the history as the power profile does; sharded or not."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    emas = [PowerEMA(model, RELATIVE_STD), ShardedPowerEMA(model, RELATIVE_STD)]
    for thetas in _updates(model, emas, 4, torch.Generator().manual_seed(1)):
        for averages in (emas[0].shadow, emas[1].full_tensors()):
            for name, average in averages.items():
                expected = _power_average([theta[name] for theta in thetas], emas[0].gamma)
                torch.testing.assert_close(average.double(), expected, rtol=1e-6, atol=1e-6)


def _odd_sized(_):
    """Seven parameters over two data-parallel ranks: slices of 4, the second one padded."""
    with parallel_context(ParallelConfig()):
        torch.manual_seed(0)  # the same weights on both ranks
        model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Linear(1, 2))
        ema = ShardedPowerEMA(model, RELATIVE_STD, parallel_state.get_data_parallel_group(with_context_parallel=True))
        reference = PowerEMA(model, RELATIVE_STD)
        for _ in _updates(model, [ema, reference], UPDATES, torch.Generator().manual_seed(1)):
            pass
        return ema.shard.numel(), ema.full_tensors(), reference.shadow


def test_a_parameter_count_that_does_not_divide_by_the_ranks_loses_nothing():
    for shard_numel, full, reference in run_distributed(_odd_sized, world_size=2, args=(None,)):
        assert shard_numel == 4
        assert full.keys() == reference.keys() and all(torch.equal(full[k], reference[k]) for k in full)
