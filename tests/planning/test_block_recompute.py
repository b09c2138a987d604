"""The planner's "block" recompute (megatron-core's method: the first N blocks recomputed, the others
keep their activations): the memory model against the bytes the real blocks save, and the
planner's pick of the fewest recomputed blocks that fit."""

import math
from dataclasses import replace

import pytest
import torch

from megatron_rcm.models.wan import WanModel, wan_config
from megatron_rcm.parallel import parallel_context
from megatron_rcm.planning import (DEFAULT_PROFILE, Cluster, Layout, PlanError, Workload, activation_bytes,
                                   check_layout, fewest_recomputed_blocks, peak_memory, plan, predict, usable_gib)
from megatron_rcm.planning.memory import GIB

from .test_activation_model import LATENT, ROUNDING, _saved_bytes

LAYERS = 4
H200 = Cluster(1, 139.8)
WAN13B = Workload("wan2.1-t2v-1.3b")


def _saved(**recompute):
    torch.manual_seed(0)
    config = wan_config("tiny-a", use_cpu_initialization=True, num_layers=LAYERS, params_dtype=torch.bfloat16,
                        fuse_elementwise=False, **recompute)
    return _saved_bytes(WanModel(config))


def test_each_block_left_out_of_recompute_keeps_what_the_model_says():
    """Each block more that keeps its activations saves its tensors instead of its input. (The
    kept blocks also share the RoPE table, a few bytes per token that the model leaves out.)"""
    config = wan_config("tiny-a", use_cpu_initialization=True, num_layers=LAYERS)
    tokens = math.prod(s // p for s, p in zip(LATENT, config.patch_size))
    block = activation_bytes(config, tokens, Layout(), DEFAULT_PROFILE, batch=1)
    with parallel_context():
        saved = {n: _saved(recompute_granularity="full", recompute_method="block", recompute_num_layers=n)
                 for n in range(1, LAYERS + 1)}
        assert saved[LAYERS] == _saved(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    per_block = (saved[1] - saved[LAYERS - 1]) / (LAYERS - 2)
    predicted = block["saved"] - block["checkpoint"]
    assert abs(per_block - predicted) <= ROUNDING * predicted, (per_block, predicted)
    assert saved[1] > saved[2] > saved[3] > saved[4]


def test_the_plan_recomputes_the_fewest_blocks_that_fit_and_runs_faster_than_full():
    best = plan(WAN13B, H200, DEFAULT_PROFILE)[0]
    config = WAN13B.config()
    student, fake_score = best["recompute_blocks"], best["fake_score_recompute_blocks"]
    # one graph alive in either backward: the same activations, so the same count fits both
    assert best["fits"] and best["recompute"] == "block" and 1 <= fake_score == student < config.num_layers
    layout = Layout(recompute="block", recompute_blocks=student, fake_score_recompute_blocks=fake_score)
    usable = usable_gib(H200) * GIB
    assert peak_memory(WAN13B, layout, DEFAULT_PROFILE)["peak"] <= usable
    # one block fewer recomputed, by either network, does not fit
    for fewer in (replace(layout, recompute_blocks=student - 1, fake_score_recompute_blocks=fake_score),
                  replace(layout, fake_score_recompute_blocks=fake_score - 1)):
        assert peak_memory(WAN13B, fewer, DEFAULT_PROFILE)["peak"] > usable
    predictions = {name: predict(WAN13B, lay, H200, DEFAULT_PROFILE) for name, lay in (
        ("none", Layout(recompute="none")), ("block", layout), ("full", Layout()),
        ("more for the fake score", replace(layout, fake_score_recompute_blocks=fake_score + 4)))}
    student_s = {name: p["student_seconds"] for name, p in predictions.items()}
    critic_s = {name: p["critic_seconds"] for name, p in predictions.items()}
    assert student_s["none"] < student_s["block"] == student_s["more for the fake score"] < student_s["full"]
    assert critic_s["none"] < critic_s["block"] < critic_s["more for the fake score"] < critic_s["full"]
    # less GPU memory: more blocks recomputed; too little for any kept block: none offered
    smaller = fewest_recomputed_blocks(WAN13B, Layout(), Cluster(1, 110), DEFAULT_PROFILE)
    assert smaller.recompute_blocks > student and smaller.fake_score_recompute_blocks > fake_score
    assert fewest_recomputed_blocks(WAN13B, Layout(), Cluster(1, 65), DEFAULT_PROFILE) is None


def test_a_block_layouts_flags_give_the_trainer_that_recompute():
    from megatron_rcm.training.arguments import parse_args

    args = parse_args(Layout(recompute="block", recompute_blocks=19, fake_score_recompute_blocks=6).flags())
    assert (args.recompute_granularity, args.recompute_method, args.recompute_num_layers,
            args.fake_score_recompute_num_layers) == ("full", "block", 19, 6)
    args = parse_args(Layout(recompute="block", recompute_blocks=19).flags())
    assert (args.recompute_num_layers, args.fake_score_recompute_num_layers) == (19, 19)
    args = parse_args(["--recompute-method", "block", "--recompute-num-layers", "5", *Layout().flags()])
    assert (args.recompute_granularity, args.recompute_method, args.recompute_num_layers) == ("full", "uniform", 1)


@pytest.mark.parametrize("student, fake_score", [(0, None), (31, None), (19, 0), (19, 31)])
def test_a_block_count_outside_the_model_is_refused(student, fake_score):
    with pytest.raises(PlanError, match="give 1 to the model's 30 blocks"):
        check_layout(WAN13B, Layout(recompute="block", recompute_blocks=student,
                                    fake_score_recompute_blocks=fake_score))
