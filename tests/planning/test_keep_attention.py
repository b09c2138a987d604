"""The planner's recompute that keeps the attention outputs (``--recompute-keep-attention``): the
kept bytes against the outputs of the real model's attention ops, the memory and time it adds to
and takes from full and block recompute, and the flags it gives the trainer."""

import math
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from megatron_rcm.models.wan import WanModel, wan_config
from megatron_rcm.parallel import parallel_context
from megatron_rcm.planning import (DEFAULT_PROFILE, Cluster, Layout, PlanError, Workload, activation_bytes,
                                   check_layout, peak_memory, plan, predict)
from megatron_rcm.planning.timing import attention_share, wan_forward_flops

from .test_activation_model import LATENT, TEXT_LEN

H200 = Cluster(1, 139.8)
WAN13B = Workload("wan2.1-t2v-1.3b")
LAYERS = 2


class AttentionOutputBytes(TorchDispatchMode):
    """Bytes of the outputs of every fused SDPA op run under it."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func).startswith("aten._scaled_dot_product_") and "backward" not in str(func):
            self.bytes += sum(t.numel() * t.element_size() for t in out if isinstance(t, torch.Tensor))
        return out


def test_the_kept_bytes_are_the_attention_outputs_of_the_real_blocks():
    torch.manual_seed(0)
    config = wan_config("tiny-a", use_cpu_initialization=True, num_layers=LAYERS, params_dtype=torch.bfloat16,
                        fuse_elementwise=False, recompute_granularity="full", recompute_method="uniform",
                        recompute_num_layers=1, recompute_keep_attention=True)
    with parallel_context():
        model = WanModel(config)
        x = torch.randn(1, config.in_channels, *LATENT, dtype=torch.bfloat16)
        text = torch.randn(1, TEXT_LEN, config.text_dim, dtype=torch.bfloat16)
        with AttentionOutputBytes() as counted:
            model(x.requires_grad_(), torch.tensor([500.0]), text)
    tokens = math.prod(s // p for s, p in zip(LATENT, config.patch_size))
    predicted = activation_bytes(config, tokens, Layout(keep_attention=True), DEFAULT_PROFILE, batch=1)
    assert counted.bytes == LAYERS * predicted["kept_attention"] > 0


def test_keeping_attention_costs_its_bytes_per_recomputed_block_and_saves_attentions_share_of_the_recompute():
    config = WAN13B.config()
    tokens = WAN13B.tokens(config)
    kept = activation_bytes(config, tokens, Layout(), DEFAULT_PROFILE, batch=1)["kept_attention"]
    share = attention_share(config, tokens, WAN13B.text_len)
    assert 0.6 < share < 0.8  # the H200 profile measured 70% of the device time in attention
    assert share == pytest.approx(30 * (4 * tokens**2 * 1536 + 4 * tokens * 512 * 1536)
                                  / wan_forward_flops(config, tokens, WAN13B.text_len), rel=1e-12)
    for layout in (Layout(), Layout(recompute="block", recompute_blocks=20, fake_score_recompute_blocks=6)):
        keep = replace(layout, keep_attention=True)
        plain, kept_memory = (peak_memory(WAN13B, lay, DEFAULT_PROFILE) for lay in (layout, keep))
        # each backward holds one graph (the student's terms are backpropagated one at a time)
        assert kept_memory["activations_student"] - plain["activations_student"] == pytest.approx(
            layout.recomputed_blocks(30) * kept, rel=1e-12)
        assert kept_memory["activations_critic"] - plain["activations_critic"] == pytest.approx(
            layout.recomputed_blocks(30, "fake_score") * kept, rel=1e-12)
        slow, fast = (predict(WAN13B, lay, H200, DEFAULT_PROFILE) for lay in (layout, keep))
        assert fast["student_seconds"] < slow["student_seconds"] and fast["critic_seconds"] < slow["critic_seconds"]
    none = predict(WAN13B, Layout(recompute="none"), H200, DEFAULT_PROFILE)
    assert none["student_seconds"] < predict(WAN13B, Layout(keep_attention=True), H200, DEFAULT_PROFILE)[
        "student_seconds"]


def test_the_planner_proposes_it_only_when_asked():
    assert not any(row["keep_attention"] for row in plan(WAN13B, H200, DEFAULT_PROFILE))
    rows = plan(WAN13B, H200, DEFAULT_PROFILE, keep_attention=True)
    best = rows[0]
    assert best["fits"] and best["keep_attention"] and best["recompute"] in ("full", "block")
    assert best["samples_per_second"] > plan(WAN13B, H200, DEFAULT_PROFILE)[0]["samples_per_second"]
    ring = plan(WAN13B, Cluster(2, 139.8), DEFAULT_PROFILE, keep_attention=True)
    assert not any(r["keep_attention"] for r in ring if r["cp"] > 1 and r["cp_mode"] == "p2p")
    assert any(r["keep_attention"] for r in ring if r["cp"] > 1 and r["cp_mode"] == "a2a")


@pytest.mark.parametrize("layout", [Layout(recompute="none", keep_attention=True),
                                    Layout(cp=2, cp_mode="p2p", keep_attention=True)], ids=["no-recompute", "ring"])
def test_layouts_it_cannot_serve_are_refused(layout):
    with pytest.raises(PlanError, match="keeping attention outputs needs full or block recompute and no ring"):
        check_layout(WAN13B, layout)


def test_a_layouts_flags_give_the_trainer_the_kept_attention():
    from megatron_rcm.training.arguments import parse_args

    for keep in (False, True):
        layout = Layout(recompute="block", recompute_blocks=20, fake_score_recompute_blocks=6, keep_attention=keep)
        args = parse_args(["--recompute-keep-attention", *layout.flags()])
        assert (args.recompute_granularity, args.recompute_keep_attention) == ("full", keep)
