"""Sharded checkpoints: TP=2 save loads at TP=1, old ones pruned, a crash mid-save loses nothing."""

import os

import pytest
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule

from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.testing import run_distributed
from megatron_rcm.training.checkpointing import TRACKER, CheckpointManager, CheckpointNotFoundError


class _Net(MegatronModule):
    def __init__(self, tp):
        cfg = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, tensor_model_parallel_size=tp,
                                use_cpu_initialization=True, params_dtype=torch.float64)
        super().__init__(cfg)
        self.up = ColumnParallelLinear(8, 12, config=cfg, init_method=torch.nn.init.normal_, bias=True,
                                       gather_output=False)
        self.down = RowParallelLinear(12, 8, config=cfg, init_method=torch.nn.init.normal_, bias=True,
                                      input_is_parallel=True, skip_bias_add=False)

    def forward(self, x):
        return self.down(self.up(x)[0])[0]


def _state(net, iteration):
    """What the tests save: the network's sharded state and the iteration (None: to be loaded)."""
    return {**net.sharded_state_dict(prefix="net."), "iteration": iteration}


def _load_latest_into(manager, net):
    """Loads the manager's latest checkpoint into ``net``; returns its iteration."""
    state = manager.load(_state(net, None))
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    return state["iteration"]


def _save_then_crash(path, tp):
    with parallel_context(ParallelConfig(tensor_model_parallel_size=tp)):
        torch.manual_seed(100 + dist.get_rank())
        net = _Net(tp)
        manager = CheckpointManager(path, keep_last=2)
        # the same input on both TP ranks (their default generators differ on purpose)
        x = torch.randn(3, 1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        outputs = {}
        for it in (1, 2, 3):
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(0.1 * it)
            outputs[it] = net(x)
            manager.save(it, _state(net, it))
        assert manager.iterations() == [2, 3]

        def crash(*args, **kwargs):
            raise RuntimeError("disk full")

        original, dist_checkpointing.save = dist_checkpointing.save, crash
        try:
            with pytest.raises(RuntimeError, match="disk full"):
                manager.save(4, net.sharded_state_dict(prefix="net."))
        finally:
            dist_checkpointing.save = original
        return x, outputs[3]


def _load_and_run(path, x):
    return _load_and_run_at(path, x, 3)


def _load_and_run_at(path, x, latest):
    with parallel_context(ParallelConfig()):
        net = _Net(1)
        manager = CheckpointManager(path)
        assert manager.latest_iteration() == latest
        iteration = _load_latest_into(manager, net)
        with torch.no_grad():
            return iteration, net(x)


def test_save_at_tp2_load_at_tp1_and_survive_a_crash(tmp_path):
    (x, y), _ = run_distributed(_save_then_crash, world_size=2, args=(tmp_path, 2))
    assert sorted(os.listdir(tmp_path)) == sorted([".iter_0000004.tmp", "iter_0000002", "iter_0000003", TRACKER])
    assert (tmp_path / TRACKER).read_text() == "3"
    iteration, net = run_distributed(_load_and_run, world_size=1, args=(tmp_path, x))[0]
    assert iteration == 3
    torch.testing.assert_close(net, y, rtol=1e-13, atol=1e-13)


def test_missing_checkpoint_is_reported(tmp_path):
    manager = CheckpointManager(tmp_path)
    assert manager.latest_iteration() is None
    (tmp_path / TRACKER).write_text("7")
    with pytest.raises(CheckpointNotFoundError, match="names iteration 7, but iter_0000007 is missing"):
        manager.latest_iteration()
    (tmp_path / "iter_0000007").mkdir()  # a folder without metadata.json, as a crashed copy leaves
    with pytest.raises(CheckpointNotFoundError, match="iter_0000007 is not a complete checkpoint"):
        manager.load({}, 7)



def _save_killed_before_its_rename(manager, net, iteration):
    """``manager.save`` of ``net`` at ``iteration``, killed as it renames its written copy into place."""
    from megatron_rcm.training import checkpointing

    original = os.rename

    def rename(source, target):
        if str(source).endswith(f".iter_{iteration:07d}.tmp"):
            raise KeyboardInterrupt("killed")
        original(source, target)

    checkpointing.os.rename = rename
    try:
        with pytest.raises(KeyboardInterrupt):
            manager.save(iteration, _state(net, iteration))
    finally:
        checkpointing.os.rename = original


def _resave_then_crash_between_renames(path):
    """Iteration 2 saved, then saved again (a signal right after a save) with a crash after the old
    copy was set aside and before the new one was renamed in; returns the first save's output."""
    with parallel_context(ParallelConfig()):
        net = _Net(1)
        x = torch.randn(3, 1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        manager = CheckpointManager(path)
        manager.save(2, _state(net, 2))
        with torch.no_grad():
            first = net(x)
            for p in net.parameters():
                p.add_(0.5)
        manager.save(2, _state(net, 2))  # replaces it: nothing left over
        assert sorted(os.listdir(path)) == ["iter_0000002", TRACKER]
        _save_killed_before_its_rename(manager, net, 2)
        with torch.no_grad():
            return x, first, net(x)


def test_a_crash_while_an_iteration_is_saved_again_keeps_its_last_copy(tmp_path):
    x, first, second = run_distributed(_resave_then_crash_between_renames, world_size=1, args=(tmp_path,))[0]
    assert sorted(os.listdir(tmp_path)) == [".iter_0000002.old", ".iter_0000002.tmp", TRACKER]
    assert not torch.allclose(first, second)
    iteration, out = run_distributed(_load_and_run_at, world_size=1, args=(tmp_path, x, 2))[0]
    assert iteration == 2
    torch.testing.assert_close(out, second, rtol=0, atol=0)  # the second save's weights, set aside and put back


def _crash_while_a_new_iteration_is_renamed_in(path):
    """Iteration 1 saved, then iteration 2 written and killed before its folder was renamed into
    place, then saved again (the resumed run reaching it). Returns the folder and the tracker after
    the crash, the outputs of the two weights, and (iteration, output) of the latest checkpoint
    loaded after the crash and after the second save."""
    def latest(manager):
        """(iteration, output) of the latest checkpoint loaded into a fresh network."""
        fresh = _Net(1)
        iteration = _load_latest_into(manager, fresh)
        with torch.no_grad():
            return iteration, fresh(x)

    with parallel_context(ParallelConfig()):
        net = _Net(1)
        x = torch.randn(3, 1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        manager = CheckpointManager(path)
        manager.save(1, _state(net, 1))
        with torch.no_grad():
            outputs = {1: net(x)}
            for p in net.parameters():
                p.add_(0.5)
            outputs[2] = net(x)
        _save_killed_before_its_rename(manager, net, 2)
        after_crash = sorted(os.listdir(path)), (path / TRACKER).read_text()
        loaded = [latest(CheckpointManager(path))]
        manager.save(2, _state(net, 2))
        loaded.append(latest(CheckpointManager(path)))
        return after_crash, outputs, loaded


def test_a_crash_before_a_new_checkpoint_is_in_place_leaves_the_tracker_on_the_previous_one(tmp_path):
    """... and saving that iteration again replaces what the crash left."""
    (listing, tracker), outputs, loaded = run_distributed(_crash_while_a_new_iteration_is_renamed_in, world_size=1,
                                                          args=(tmp_path,))[0]
    assert listing == [".iter_0000002.tmp", "iter_0000001", TRACKER] and tracker == "1"
    assert sorted(os.listdir(tmp_path)) == ["iter_0000001", "iter_0000002", TRACKER]
    assert not torch.allclose(outputs[1], outputs[2])
    assert [iteration for iteration, _ in loaded] == [1, 2]
    for iteration, out in loaded:
        torch.testing.assert_close(out, outputs[iteration], rtol=0, atol=0)
