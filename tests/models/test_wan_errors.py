"""Clear errors for impossible parallel layouts, wrong inputs and mismatched weights."""

import pytest
import torch

from megatron_rcm import load_model
from megatron_rcm.models.wan import WanModel, load_diffusers_weights
from megatron_rcm.models.wan.diffusers_weights import convert_diffusers_state_dict
from megatron_rcm.parallel import parallel_context

from .wan_oracle import config, diffusers_model, inputs


def test_heads_not_divisible_by_tensor_parallel():
    with pytest.raises(ValueError, match="not divisible by the tensor-parallel size"):
        config("tiny-b", tensor_model_parallel_size=3)


def test_all_to_all_needs_heads_per_rank_divisible_by_context_parallel():
    with pytest.raises(ValueError, match="all-to-all context parallelism"):
        config("tiny-a", tensor_model_parallel_size=2, context_parallel_size=2, cp_comm_type="a2a")
    config("tiny-a", tensor_model_parallel_size=2, context_parallel_size=2, cp_comm_type="p2p")


def test_unknown_context_parallel_mode():
    with pytest.raises(ValueError, match="cp_comm_type"):
        config("tiny-a", cp_comm_type="allgather")


def test_config_must_match_the_initialised_groups():
    with parallel_context(), pytest.raises(ValueError, match="initialised groups"):
        WanModel(config("tiny-b", tensor_model_parallel_size=2))


@pytest.fixture
def model():
    with parallel_context():
        yield WanModel(config("tiny-b"))


@pytest.mark.parametrize("change,message", [
    (dict(x=torch.randn(3, 2, 2, 3, dtype=torch.float64)), r"hidden_states must be \[B, 3, T, H, W\]"),
    (dict(x=torch.randn(2, 4, 2, 2, 3, dtype=torch.float64)), r"hidden_states must be \[B, 3, T, H, W\]"),
    (dict(x=torch.randn(2, 3, 3, 2, 3, dtype=torch.float64)), "frames 3 is not divisible by the patch size 2"),
    (dict(t=torch.rand(2, 1, dtype=torch.float64)), r"timestep must have shape \[2\]"),
    (dict(text=torch.randn(2, 3, 21, dtype=torch.float64)), "text dim 21, the model expects 20"),
    (dict(text=torch.randn(1, 3, 20, dtype=torch.float64)), r"encoder_hidden_states must be \[2, L, 20\]"),
])
def test_wrong_inputs(model, change, message):
    data = {**inputs(model.config, 2, (2, 2, 3), 3, seed=0), **change}
    with pytest.raises(ValueError, match=message):
        model(data["x"], data["t"], data["text"])


def test_tangent_shapes_must_match(model):
    data = inputs(model.config, 2, (2, 2, 3), 3, seed=0)
    with pytest.raises(ValueError, match="tangent shapes"):
        model.jvp(data["x"], data["t"], data["text"], data["x_t"][:1], data["t_t"])


def test_missing_and_unknown_weights_are_listed():
    cfg = config("tiny-b")
    state = diffusers_model(cfg, seed=0).state_dict()
    state.pop("blocks.1.attn2.to_k.weight")
    state["blocks.0.attn2.add_k_proj.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"missing .*blocks\.1\.attn2\.to_k\.weight.*unknown .*add_k_proj"):
        convert_diffusers_state_dict(state, cfg)


def test_weights_of_another_shape_are_refused():
    with parallel_context():
        model = WanModel(config("tiny-b"))
        other = diffusers_model(config("tiny-b", ffn_hidden_size=64), seed=0)
        with pytest.raises(ValueError, match=r"ffn\.net\.0\.proj\.weight: \(64, 64\) != \(80, 64\)"):
            load_diffusers_weights(model, other)


def test_load_model_refuses_other_folders(tmp_path):
    (tmp_path / "config.json").write_text('{"_class_name": "FluxTransformer2DModel"}')
    with pytest.raises(ValueError, match="'FluxTransformer2DModel' is not a supported diffusers transformer; "
                                         "supported: .'CosmosTransformer3DModel', 'WanTransformer3DModel'."):
        load_model(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="nor a diffusers transformer folder"):
        load_model(str(tmp_path / "empty"))
