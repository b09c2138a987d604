"""Full recompute that keeps the attention outputs (``recompute_keep_attention``): the recomputed
blocks run their linears again in the backward but not their attention; loss and every gradient
equal those without recompute and with plain full recompute, in float64, for Wan and Cosmos and
under the rCM student loss (sCM JVP + DMD rollout with grad)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.losses.config import RCMConfig
from megatron_rcm.losses.rcm import Denoisers, IterationNoise, student_loss
from megatron_rcm.models.cosmos import CosmosModel, cosmos_config
from megatron_rcm.models.wan import WanModel, wan_config
from megatron_rcm.parallel import parallel_context

LAYERS = 3
# the op of every fused SDPA backend a forward can pick (CPU: flash_attention_for_cpu)
ATTENTION = {f"aten._scaled_dot_product_{name}.default"
             for name in ("flash_attention", "efficient_attention", "cudnn_attention", "flash_attention_for_cpu")}
LINEAR = {"aten.mm.default", "aten.addmm.default"}
SETTINGS = {
    "none": {},
    "full": dict(recompute_method="uniform", recompute_num_layers=1),
    "keep": dict(recompute_method="uniform", recompute_num_layers=2, recompute_keep_attention=True),
    "block2": dict(recompute_method="block", recompute_num_layers=2),
    "block2_keep": dict(recompute_method="block", recompute_num_layers=2, recompute_keep_attention=True),
}
FAMILIES = {"wan": (WanModel, wan_config, "tiny-a"), "cosmos": (CosmosModel, cosmos_config, "cosmos-tiny-a")}


class OpCounter(TorchDispatchMode):
    """Counts the attention and matmul ops that reach the dispatcher (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.attention = self.linear = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        self.attention += name in ATTENTION
        self.linear += name in LINEAR
        return func(*args, **(kwargs or {}))


def _model(family, setting, state=None):
    cls, config_of, preset = FAMILIES[family]
    overrides = SETTINGS[setting]
    config = config_of(preset, num_layers=LAYERS, params_dtype=torch.float64, use_cpu_initialization=True,
                       **(dict(recompute_granularity="full", **overrides) if overrides else {}))
    model = cls(config)
    if state is None:
        with torch.no_grad():  # megatron starts biases and norms at constants: make every weight matter
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    else:
        model.load_state_dict(state)
    return model


def _data(config, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (2, config.in_channels, 2, 4, 4)
    return dict(x=torch.randn(*shape, generator=g, dtype=torch.float64),
                t=torch.rand(2, generator=g, dtype=torch.float64) * 1000,
                text=torch.randn(2, 3, config.text_dim, generator=g, dtype=torch.float64),
                w=torch.randn(2, config.out_channels, *shape[2:], generator=g, dtype=torch.float64))


def _grads(model, x):
    return {"x": x.grad, **{n: p.grad for n, p in model.named_parameters()}}


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_attention_equals_no_and_full_recompute_and_skips_the_attention_rerun(family):
    with parallel_context():
        torch.manual_seed(3)
        state = _model(family, "none").state_dict()
        results = {}
        for setting in SETTINGS:
            model = _model(family, setting, state)
            data = _data(model.config, 4)
            x = data["x"].requires_grad_()
            with OpCounter() as counter:
                loss = (model(x, data["t"], data["text"]) * data["w"]).sum()
                forward_attention = counter.attention
                loss.backward()
            results[setting] = (loss.detach(), _grads(model, x), forward_attention, counter)
    loss, grads, forward_attention, none = results["none"]
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    per_block = forward_attention // LAYERS
    assert per_block >= 2 and forward_attention == per_block * LAYERS  # self- and cross-attention
    for setting, (other_loss, other_grads, other_forward_attention, counter) in results.items():
        assert other_forward_attention == forward_attention, setting
        assert torch.allclose(other_loss, loss, rtol=1e-13, atol=0), setting
        for key, g in grads.items():
            assert torch.allclose(other_grads[key], g, rtol=1e-12, atol=1e-14), (setting, key)
    # attention runs once per block unless plain recompute reruns it; the linears rerun either way
    assert results["full"][3].attention == none.attention + per_block * LAYERS
    assert results["block2"][3].attention == none.attention + per_block * 2
    assert results["keep"][3].attention == results["block2_keep"][3].attention == none.attention
    assert results["keep"][3].linear == results["full"][3].linear > none.linear
    assert results["block2_keep"][3].linear == results["block2"][3].linear > none.linear


def test_the_student_loss_gradient_is_the_same_when_the_student_keeps_attention():
    """The rCM student loss reads the student in a JVP without grad (sCM) and in a rollout with grad (DMD)."""
    with parallel_context():
        torch.manual_seed(5)
        teacher, fake_score = _model("wan", "none"), _model("wan", "none")
        state = _model("wan", "none").state_dict()
        data = _data(teacher.config, 6)
        x0, text = data["x"], data["text"]
        g = torch.Generator().manual_seed(7)
        t_scm = torch.atan(torch.exp(1.6 * torch.randn(2, generator=g, dtype=torch.float64)))
        noise = IterationNoise(eps=torch.randn(x0.shape, generator=g, dtype=torch.float64), t_scm=t_scm,
                               rollout=[torch.randn(x0.shape, generator=g, dtype=torch.float64)],
                               t_dmd=0.05 + 1.45 * torch.rand(2, generator=g, dtype=torch.float64),
                               eps_dmd=torch.randn(x0.shape, generator=g, dtype=torch.float64))
        config = RCMConfig(tangent_warmup=0, max_rollout_steps=1)
        results = {}
        for setting in ("none", "full", "keep"):
            student = _model("wan", setting, state)
            denoisers = Denoisers(TrigFlowDenoiser(teacher), TrigFlowDenoiser(student), TrigFlowDenoiser(fake_score))
            loss, _ = student_loss(denoisers, config, x0, text, noise, iteration=0, student_updates=0)
            loss.backward()
            results[setting] = (loss.detach(), {n: p.grad for n, p in student.named_parameters()})
    loss, grads = results["none"]
    assert config.uses_dmd(0) and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    for setting, (other_loss, other_grads) in results.items():
        assert torch.allclose(other_loss, loss, rtol=1e-13, atol=0), setting
        for key, g in grads.items():
            assert torch.allclose(other_grads[key], g, rtol=1e-12, atol=1e-14), (setting, key)


def test_keeping_attention_needs_full_recompute():
    with pytest.raises(ValueError, match="recompute_keep_attention needs recompute_granularity='full'"):
        wan_config("tiny-a", recompute_keep_attention=True)


def test_the_flag_reaches_student_and_fake_score_and_is_refused_where_it_cannot_work(tmp_path):
    from megatron_rcm.parallel import ParallelConfig
    from megatron_rcm.training.arguments import ConfigError, load_config
    from megatron_rcm.training.networks import build_networks

    from .tiny_setup import make_inputs

    flags = make_inputs(tmp_path) + ["--train-iters", "1", "--recompute-keep-attention"]
    full = ["--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", "1"]
    config = load_config(flags + full, world_size=1)
    with parallel_context(ParallelConfig()):
        networks = build_networks(config, torch.device("cpu"))
    assert networks.student.module.config.recompute_keep_attention
    assert networks.fake_score.module.config.recompute_keep_attention
    assert not networks.teacher.net.net.config.recompute_keep_attention
    with pytest.raises(ConfigError, match="--recompute-keep-attention needs --recompute-granularity full"):
        load_config(flags, world_size=1)
    with pytest.raises(ConfigError, match="recompute_keep_attention does not work with ring context parallelism"):
        load_config(flags + full + ["--context-parallel-size", "2", "--cp-comm-type", "p2p"], world_size=2)



def test_the_compiled_elementwise_pieces_stay_compiled_under_it(monkeypatch):
    """A compiled piece around attention, compiled once without recompute, serves the kept-attention
    checkpoint's forward and recompute without another graph, with the same gradients."""
    from torch._dynamo.utils import counters

    from megatron_rcm.models import dit

    from .test_compiled_pieces import compiled_bias_gelu

    piece = compiled_bias_gelu(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 8, 16, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(16, generator=g, dtype=torch.float64, requires_grad=True)
    keys = torch.arange(8) < 6

    def run(x, bias):
        y = piece(x, bias, tangent=False, compiled=True)
        attended = torch.nn.functional.scaled_dot_product_attention(y, y, y, attn_mask=keys[None, None, None, :])
        return piece(attended, bias, tangent=False, compiled=True)

    seen = []  # the ops the checkpoint's policy decides on: a compiled piece's reach it as one kernel

    def recording_policy(ctx, op, *args, **kwargs):
        seen.append(str(op))
        return keep_attention(ctx, op, *args, **kwargs)

    keep_attention = dit._keep_attention
    monkeypatch.setattr(dit, "_keep_attention", recording_policy)
    grads = {}
    # kept first: the pieces compile inside the checkpoint. (No OpCounter here: torch.compile runs
    # eagerly under a user's dispatch mode.)
    for name, call in (("kept", lambda *a: dit._checkpoint_keeping_attention(run, *a)), ("plain", run)):
        (call(x, bias) * x).sum().backward()
        grads[name] = (x.grad.clone(), bias.grad.clone(), counters["stats"]["unique_graphs"])
        x.grad = bias.grad = None
    plain, kept = grads["plain"], grads["kept"]
    assert kept[2] == plain[2] == 2  # the plain and the backward form
    assert "aten._scaled_dot_product_flash_attention_for_cpu.default" in seen and "aten.tanh.default" not in seen
    for a, b in zip(kept[:2], plain[:2]):
        assert torch.allclose(a, b, rtol=1e-13, atol=0)
