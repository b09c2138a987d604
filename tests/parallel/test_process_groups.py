"""Megatron process groups built by initialize_parallel have the expected members."""

import pytest
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_rcm.parallel import ParallelConfig, ParallelSizeError, initialize_parallel, parallel_context
from megatron_rcm.testing import run_distributed


def _members(tp, cp):
    with parallel_context(ParallelConfig(tensor_model_parallel_size=tp, context_parallel_size=cp)):
        return {
            "tp": dist.get_process_group_ranks(parallel_state.get_tensor_model_parallel_group()),
            "cp": dist.get_process_group_ranks(parallel_state.get_context_parallel_group()),
            "dp": dist.get_process_group_ranks(parallel_state.get_data_parallel_group()),
            "dp_cp": dist.get_process_group_ranks(parallel_state.get_data_parallel_group(with_context_parallel=True)),
            "sizes": (parallel_state.get_tensor_model_parallel_world_size(),
                      parallel_state.get_context_parallel_world_size(),
                      parallel_state.get_data_parallel_world_size()),
        }


# Megatron's order "tp-cp-ep-dp-pp": TP ranks are adjacent, then CP, then DP.
@pytest.mark.parametrize(
    "tp, cp, expected",
    [
        (2, 1, {"tp": [[0, 1], [0, 1], [2, 3], [2, 3]], "cp": [[0], [1], [2], [3]],
                "dp": [[0, 2], [1, 3], [0, 2], [1, 3]], "dp_cp": [[0, 2], [1, 3], [0, 2], [1, 3]],
                "sizes": (2, 1, 2)}),
        (1, 2, {"tp": [[0], [1], [2], [3]], "cp": [[0, 1], [0, 1], [2, 3], [2, 3]],
                "dp": [[0, 2], [1, 3], [0, 2], [1, 3]], "dp_cp": [[0, 1, 2, 3]] * 4,
                "sizes": (1, 2, 2)}),
        (2, 2, {"tp": [[0, 1], [0, 1], [2, 3], [2, 3]], "cp": [[0, 2], [1, 3], [0, 2], [1, 3]],
                "dp": [[0], [1], [2], [3]], "dp_cp": [[0, 2], [1, 3], [0, 2], [1, 3]],
                "sizes": (2, 2, 1)}),
    ],
)
def test_groups_on_four_ranks(tp, cp, expected):
    got = run_distributed(_members, world_size=4, args=(tp, cp))
    # "dp_cp" is the gradient-reduction group of a CP run: DP x CP
    for key in ("tp", "cp", "dp", "dp_cp"):
        assert [sorted(g[key]) for g in got] == expected[key], key
    assert all(g["sizes"] == expected["sizes"] for g in got)


def _bad_size():
    with pytest.raises(ParallelSizeError, match=r"world size 2 is not divisible by tensor \(4\)"):
        initialize_parallel(ParallelConfig(tensor_model_parallel_size=4))
    assert not dist.is_initialized(), "the error must come before any process group is created"


def test_bad_size_fails_before_groups_exist():
    run_distributed(_bad_size, world_size=2)


def test_bad_sizes_message_names_what_to_change():
    with pytest.raises(ParallelSizeError, match="launch a multiple of 6"):
        ParallelConfig(tensor_model_parallel_size=2, context_parallel_size=3).data_parallel_size(8)
    with pytest.raises(ParallelSizeError, match="positive integer"):
        ParallelConfig(context_parallel_size=0)
    with pytest.raises(ParallelSizeError, match="sequence_parallel needs tensor_model_parallel_size > 1"):
        ParallelConfig(sequence_parallel=True)
    assert ParallelConfig(tensor_model_parallel_size=2, context_parallel_size=2).data_parallel_size(8) == 2
    # pipeline stages take ranks too
    assert ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2).data_parallel_size(8) == 2
    with pytest.raises(ParallelSizeError, match="launch a multiple of 3"):
        ParallelConfig(pipeline_model_parallel_size=3).data_parallel_size(4)
