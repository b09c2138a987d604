"""The activation model against the real Wan blocks: the bytes of the tensors one block saves for
its backward (bf16, counted with autograd's saved-tensor hooks, each storage once) are what the
default profile's coefficients give, per rank, at TP 1 and at TP 2 with and without sequence
parallelism. The coefficients are rounded per-token byte counts of the block's saved tensors, so
the check allows the few bytes they round away (norm statistics, the attention's log-sum-exp)."""

import math

import pytest
import torch

from megatron_rcm.models.wan import WanModel, wan_config
from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.planning import DEFAULT_PROFILE, Layout, activation_bytes
from megatron_rcm.testing import run_distributed

LATENT = (8, 16, 16)
TEXT_LEN = 8
# the coefficients are whole bytes per token and channel; the rest of a block's saved tensors
# (per-token statistics, per-head values) stays below this fraction at these widths
ROUNDING = 0.02


def _saved_bytes(model):
    """Bytes of the tensors autograd saves in one forward (parameters left out)."""
    config = model.config
    x = torch.randn(1, config.in_channels, *LATENT, dtype=torch.bfloat16)
    text = torch.randn(1, TEXT_LEN, config.text_dim, dtype=torch.bfloat16)
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x, torch.tensor([500.0]), text)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


def _per_block(preset, tp, sp):
    """Saved bytes of a 2-block model minus a 1-block one, on this rank."""
    with parallel_context(ParallelConfig(tensor_model_parallel_size=tp, sequence_parallel=sp)):
        counts = []
        for layers in (1, 2):
            torch.manual_seed(0)
            config = wan_config(preset, use_cpu_initialization=True, num_layers=layers, params_dtype=torch.bfloat16,
                                tensor_model_parallel_size=tp, sequence_parallel=sp, fuse_elementwise=False)
            counts.append(_saved_bytes(WanModel(config)))
        return counts[1] - counts[0]


@pytest.mark.parametrize("preset, tp, sp", [("tiny-a", 1, False), ("tiny-b", 2, True), ("tiny-b", 2, False)],
                         ids=["tiny-a-tp1", "tiny-b-tp2-sp", "tiny-b-tp2"])
def test_saved_activations_per_block_match_the_model(preset, tp, sp):
    config = wan_config(preset, use_cpu_initialization=True)
    tokens = math.prod(s // p for s, p in zip(LATENT, config.patch_size))
    predicted = activation_bytes(config, tokens, Layout(tp=tp, sp=sp), DEFAULT_PROFILE, batch=1)["saved"]
    for measured in run_distributed(_per_block, world_size=tp, args=(preset, tp, sp)):
        assert abs(measured - predicted) <= ROUNDING * predicted, (measured, predicted)
