"""docs/models.md's snippets as a reader runs them on a machine without a GPU: a model built from a
preset (``WanModel(wan_config(...))``, ``CosmosModel(cosmos_config(...))``) outside any parallel
context, diffusers weights loaded into it, then its forward and JVP. A preset's config placed the
weights on CUDA, so on the CPU the first line failed with "Torch not compiled with CUDA enabled"."""

import pytest
import torch

from megatron_rcm.models import family_of_preset

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="what a CPU-only machine does")


def _diffusers_model(preset):
    import diffusers

    family = family_of_preset(preset)
    kwargs = family.diffusers_config(family.config_class.from_preset(preset))
    torch.manual_seed(0)
    return getattr(diffusers, kwargs.pop("_class_name"))(**kwargs)


@pytest.mark.parametrize("preset, frames, t", [("tiny-a", 2, 500.0), ("cosmos-tiny-a", 1, 0.5)])
def test_a_preset_model_builds_loads_and_runs_on_the_cpu(preset, frames, t):
    from megatron_rcm.models.cosmos import CosmosModel, cosmos_config
    from megatron_rcm.models.cosmos import load_diffusers_weights as load_cosmos
    from megatron_rcm.models.wan import WanModel, load_diffusers_weights, wan_config

    if preset.startswith("cosmos"):
        model = load_cosmos(CosmosModel(cosmos_config(preset)), _diffusers_model(preset))
    else:
        config = wan_config(preset, params_dtype=torch.float32)
        model = load_diffusers_weights(WanModel(config), _diffusers_model(preset))
    config = model.config
    x = torch.randn(1, config.in_channels, frames, 4, 6)
    timestep, text = torch.tensor([t]), torch.randn(1, 3, config.text_dim)
    with torch.no_grad():
        v = model(x, timestep, text)
    v_jvp, v_t = model.jvp(x, timestep, text, torch.randn_like(x), torch.ones_like(timestep))
    assert v.shape == v_t.shape == x.shape
    torch.testing.assert_close(v_jvp, v)
