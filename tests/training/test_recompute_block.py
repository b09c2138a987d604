"""megatron-core's "block" recompute method in the DiT (``--recompute-method block``): the first N
blocks are recomputed in the backward, the others keep their activations; loss and every gradient
equal those without recompute and with full (uniform) recompute, in float64."""

import pytest
import torch

from megatron_rcm.models.wan import WanModel, wan_config
from megatron_rcm.parallel import parallel_context
from megatron_rcm.training.arguments import ConfigError, load_config

from .tiny_setup import make_inputs

LAYERS = 4
SETTINGS = {"none": {}, "uniform": dict(recompute_method="uniform", recompute_num_layers=1),
            **{f"block{n}": dict(recompute_method="block", recompute_num_layers=n) for n in (1, 3, LAYERS)}}


def _loss_and_grads(name, state, data):
    overrides = SETTINGS[name]
    config = wan_config("tiny-a", num_layers=LAYERS, params_dtype=torch.float64, use_cpu_initialization=True,
                        **(dict(recompute_granularity="full", **overrides) if overrides else {}))
    model = WanModel(config)
    model.load_state_dict(state)
    calls = [0] * LAYERS
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    x = data["x"].clone().requires_grad_()
    loss = (model(x, data["t"], data["text"]) * data["w"]).sum()
    forward_calls = list(calls)
    loss.backward()
    recomputed = [c - f for c, f in zip(calls, forward_calls)]
    return loss.detach(), {"x": x.grad, **{n: p.grad for n, p in model.named_parameters()}}, recomputed


def test_block_recompute_equals_none_and_uniform():
    with parallel_context():
        torch.manual_seed(3)
        reference = WanModel(wan_config("tiny-a", num_layers=LAYERS, params_dtype=torch.float64,
                                        use_cpu_initialization=True))
        with torch.no_grad():  # megatron starts biases and norms at constants: make every weight matter
            for p in reference.parameters():
                p.add_(0.1 * torch.randn_like(p))
        state = reference.state_dict()
        config = reference.config
        g = torch.Generator().manual_seed(4)
        data = dict(x=torch.randn(2, config.in_channels, 2, 4, 4, generator=g, dtype=torch.float64),
                    t=torch.rand(2, generator=g, dtype=torch.float64) * 1000,
                    text=torch.randn(2, 3, config.text_dim, generator=g, dtype=torch.float64),
                    w=torch.randn(2, config.out_channels, 2, 4, 4, generator=g, dtype=torch.float64))
        results = {name: _loss_and_grads(name, state, data) for name in SETTINGS}
    loss, grads, _ = results["none"]
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    # the blocks each setting ran again in the backward: none, all, or the first N
    assert results["none"][2] == [0] * LAYERS and results["uniform"][2] == [1] * LAYERS
    for n in (1, 3, LAYERS):
        assert results[f"block{n}"][2] == [1] * n + [0] * (LAYERS - n)
    for name, (other_loss, other_grads, _) in results.items():
        assert torch.allclose(other_loss, loss, rtol=1e-13, atol=0), name
        for key, g in grads.items():
            assert torch.allclose(other_grads[key], g, rtol=1e-12, atol=1e-14), (name, key)


@pytest.mark.parametrize("count", [0, 3])
def test_block_count_outside_the_model_is_refused(tmp_path, count):
    flags = make_inputs(tmp_path)  # tiny-a: 2 layers
    with pytest.raises(ConfigError, match="recompute_num_layers must be between 1 and the model's 2 layers"):
        load_config(flags + ["--data-path", str(tmp_path / "data"), "--recompute-granularity", "full",
                             "--recompute-method", "block", "--recompute-num-layers", str(count)], world_size=1)


def test_the_fake_score_recomputes_its_own_count_of_blocks(tmp_path):
    from megatron_rcm.parallel import ParallelConfig
    from megatron_rcm.training.networks import build_networks

    flags = make_inputs(tmp_path) + ["--train-iters", "1", "--recompute-granularity", "full",
                                     "--recompute-method", "block", "--recompute-num-layers", "2"]
    config = load_config(flags + ["--fake-score-recompute-num-layers", "1"], world_size=1)
    with parallel_context(ParallelConfig()):
        networks = build_networks(config, torch.device("cpu"))
    recompute = {name: (net.module.config.recompute_method, net.module.config.recompute_num_layers)
                 for name, net in (("student", networks.student), ("fake_score", networks.fake_score))}
    assert recompute == {"student": ("block", 2), "fake_score": ("block", 1)}
    assert networks.teacher.net.net.config.recompute_granularity is None
    with pytest.raises(ConfigError, match="needs --recompute-granularity full --recompute-method block"):
        load_config(flags + ["--recompute-method", "uniform", "--fake-score-recompute-num-layers", "1"], world_size=1)


def test_the_dmd_direction_guides_the_same_teacher_at_its_own_scale(tmp_path):
    from megatron_rcm.parallel import ParallelConfig
    from megatron_rcm.training.networks import build_networks

    flags = make_inputs(tmp_path) + ["--train-iters", "1"]
    with parallel_context(ParallelConfig()):
        same = build_networks(load_config(flags, world_size=1), torch.device("cpu"))
        other = build_networks(load_config(flags + ["--dmd-guidance-scale", "7.5"], world_size=1),
                               torch.device("cpu"))
    assert same.dmd_teacher is same.teacher
    assert other.dmd_teacher.net.scale == 7.5 and other.teacher.net.scale != 7.5
    assert other.dmd_teacher.net.net is other.teacher.net.net  # one frozen module, two guidance wrappers
