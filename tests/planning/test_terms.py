"""The planner's byte and second counts against hand-written formulas (docs/planning.md), term by term: the
distributed optimizer's and the EMA's sharding over DP x CP, where offloaded states live, the kept attention and
the checkpointed input under TP/SP/CP, each pass's collectives, the iteration's passes, and the layout rules.
The other planning tests compare orderings and fits, which many wrong terms leave unchanged."""

import math

import pytest

from megatron_rcm.planning import (DEFAULT_PROFILE, Cluster, Layout, PlanError, Profile, Workload, activation_bytes,
                                   candidate_layouts, check_layout, local_parameter_numels, peak_memory, state_bytes,
                                   usable_gib)
from megatron_rcm.planning.timing import iteration_seconds, model_tflops_per_gpu, pass_seconds

WAN13B = Workload("wan2.1-t2v-1.3b")
WAN14B = Workload("wan2.1-t2v-14b")
# round figures, so that every term below is a plain product
PROFILE = Profile(matmul_tflops=100.0, forward_efficiency=0.5, jvp_ratio=3.0, backward_ratio=2.0,
                  tp_bandwidth_gbs=200.0, cp_a2a_bandwidth_gbs=100.0, cp_p2p_bandwidth_gbs=50.0,
                  inter_node_bandwidth_gbs=10.0, hbm_bandwidth_gbs=1000.0, host_bandwidth_gbs=20.0,
                  iteration_overhead_s=0.25)


def test_the_wan_13b_workload_is_32760_tokens_of_1_5_billion_local_parameters():
    """480 x 832 x 81: 21 latent frames of 60 x 104, patches of 1 x 2 x 2."""
    config = WAN13B.config()
    assert WAN13B.tokens(config) == 21 * 30 * 52 == 32760
    assert 1.4e9 < sum(local_parameter_numels(config, 1)) < 1.5e9


@pytest.mark.parametrize("tp, cp, dp", [(1, 1, 8), (2, 2, 2), (4, 1, 3)])
def test_distributed_optimizer_and_ema_shard_over_dp_times_cp(tp, cp, dp):
    """Per rank: bf16 parameters and fp32 gradients over the whole (padded) DDP buffer, 12 bytes of Adam state
    per element of the rank's 1/(DP x CP) buffer shard, 4 bytes per element of its 1/(DP x CP) EMA slice of the
    unpadded local parameters, a bf16 teacher."""
    config = WAN13B.config()
    local = sum(local_parameter_numels(config, tp))
    states = state_bytes(config, Layout(tp=tp, cp=cp, dp=dp, sp=tp > 1))
    buffer = states["student"]["gradients"] // 4
    assert buffer % math.lcm(dp * cp, 128) == 0 and local <= buffer < local + 64 * 1000
    assert states["student"] == states["fake_score"] == {
        "parameters": 2 * buffer, "gradients": 4 * buffer, "optimizer": 12 * buffer // (dp * cp), "where": "gpu"}
    assert states["ema"] == {"parameters": 4 * math.ceil(local / (dp * cp)), "where": "gpu"}
    assert states["teacher"] == {"parameters": 2 * local, "where": "gpu"}


def test_offloaded_states_are_on_the_host_each_its_own():
    config = WAN13B.config()
    for teacher, ema in ((True, False), (False, True), (True, True)):
        layout = Layout(offload_teacher=teacher, offload_ema=ema)
        states = state_bytes(config, layout)
        assert (states["teacher"]["where"], states["ema"]["where"]) == (
            "host" if teacher else "gpu", "host" if ema else "gpu")
        memory = peak_memory(WAN13B, layout, DEFAULT_PROFILE)
        assert memory["states_host"] == teacher * states["teacher"]["parameters"] + ema * states["ema"]["parameters"]
        on = peak_memory(WAN13B, Layout(), DEFAULT_PROFILE)
        # the offloaded teacher is back on the GPU during its calls, with the student's graph alive
        assert memory["activations_student"] - on["activations_student"] == pytest.approx(
            teacher * states["teacher"]["parameters"], rel=1e-12)


@pytest.mark.parametrize("tp, cp, sp", [(2, 1, True), (2, 1, False), (1, 2, False), (2, 2, True)])
def test_kept_attention_and_checkpointed_input_bytes(tp, cp, sp):
    """Each of a block's 2 attention calls keeps its bf16 output [tokens / CP, hidden / TP] and fp32 log-sum-exp
    [heads / TP, tokens / CP]; a recomputed block keeps its bf16 input, [tokens / CP (/ TP under SP), hidden]."""
    config = WAN13B.config()
    d, heads, batch = config.hidden_size, config.num_attention_heads, 2
    tokens = 32760  # a multiple of 2 x 2
    block = activation_bytes(config, tokens, Layout(tp=tp, cp=cp, sp=sp), DEFAULT_PROFILE, batch)
    local = tokens // cp
    assert block["kept_attention"] == pytest.approx(2 * batch * local * (2 * d / tp + 4 * heads / tp), rel=1e-12)
    assert block["checkpoint"] == pytest.approx(batch * local / (tp if sp else 1) * d * 2, rel=1e-12)


def test_the_critics_graph_can_set_the_peak():
    """The transient term is the largest of the student's graph, the critic's, the optimizer step and the EMA
    visit: with the student's blocks all recomputed and the critic's all kept, the critic's graph sets it."""
    layout = Layout(recompute="block", recompute_blocks=30, fake_score_recompute_blocks=1)
    memory = peak_memory(WAN13B, layout, DEFAULT_PROFILE)
    assert memory["activations_critic"] > memory["activations_student"]
    assert memory["peak"] == memory["states_gpu"] + memory["sp_buffer"] + memory["activations_critic"]


def _forward(config, tokens, text_len=512):
    d, f = config.hidden_size, config.ffn_hidden_size
    flops = config.num_layers * (12 * tokens * d * d + 4 * tokens**2 * d + 4 * tokens * text_len * d
                                 + 4 * tokens * d * f)
    return flops / (PROFILE.matmul_tflops * 1e12 * PROFILE.forward_efficiency)


@pytest.mark.parametrize("layout, gpus_per_node, comm", [
    # per block and forward: 6 TP collectives of (TP - 1) / TP of the [tokens / CP, hidden] bf16 stream
    (Layout(tp=2, sp=True), 8, lambda n, d: 6 * 0.5 * n * d * 2 / 200e9),
    (Layout(tp=8, sp=True), 8, lambda n, d: 6 * 7 / 8 * n * d * 2 / 200e9),  # a whole node: NVLink
    # all-to-all CP: 4 of (CP - 1) / CP of the chunk [tokens / CP, hidden / TP]; ring: 2 (CP - 1) chunks
    (Layout(cp=2), 8, lambda n, d: 4 * 0.5 * n / 2 * d * 2 / 100e9),
    (Layout(cp=4, cp_mode="p2p"), 8, lambda n, d: 2 * 3 * n / 4 * d * 2 / 50e9),
    # a TP x CP group wider than a node runs at the inter-node bandwidth
    (Layout(tp=2, cp=2, sp=True), 2, lambda n, d: (6 * 0.5 * n / 2 * d * 2 / 200e9
                                                   + 4 * 0.5 * n / 2 * d / 2 * 2 / 10e9)),
], ids=["tp2", "tp8-node", "cp2-a2a", "cp4-ring", "tp2-cp2-two-nodes"])
def test_each_pass_is_its_flops_plus_its_collectives(layout, gpus_per_node, comm):
    """forward = FLOPs / (TP x CP) at the profile's rate + one set of collectives; the JVP carries primal and
    tangent (2 sets), forward + backward 2, plus 1 under full recompute."""
    config = WAN13B.config()
    tokens = WAN13B.tokens(config)
    cluster = Cluster(layout.gpus, 80, gpus_per_node)
    block_comm = config.num_layers * comm(tokens, config.hidden_size)
    compute = _forward(config, tokens) / (layout.tp * layout.cp)
    got = pass_seconds(config, WAN13B, layout, PROFILE, cluster)
    assert got["forward"] == pytest.approx(compute + block_comm, rel=1e-12)
    assert got["jvp"] == pytest.approx(3 * compute + 2 * block_comm, rel=1e-12)
    assert got["train"] == pytest.approx(compute * (1 + 2 + 1) + 3 * block_comm, rel=1e-12)


def test_an_iteration_is_its_passes_update_and_offload_copies():
    """Student: guided teacher (2 forwards), JVP, forward + backward, 1.5 rollout forwards, its last step with
    backward, guided teacher (2), fake score (1); critic: 2.5 rollout forwards and the fake score's forward +
    backward; each plus the optimizer step (36 bytes per shard element at the HBM rate), the DP exchange of fp32
    gradients and bf16 parameters, and the overhead; offloads add their host copies. The mean is over 1 student
    and freq - 1 critic iterations."""
    config = WAN13B.config()
    layout = Layout(dp=2, offload_ema=True, offload_teacher=True)
    cluster = Cluster(2, 80)
    workload = Workload("wan2.1-t2v-1.3b", micro_batch_size=2, student_update_freq=4)
    local = sum(local_parameter_numels(config, 1))
    buffer = state_bytes(config, layout)["student"]["gradients"] // 4
    forward = _forward(config, WAN13B.tokens(config))
    jvp, train = 3 * forward, 4 * forward
    update = 36 * buffer / 2 / 1000e9 + 0.5 * buffer * 6 / 200e9 + 0.25
    student = 2 * (2 * forward + jvp + train + 1.5 * forward + train + 2 * forward + forward) + update
    student += 2 * 4 * math.ceil(local / 2) / 20e9 + 2 * 2 * local / 20e9
    critic = 2 * (2.5 * forward + train) + update
    got = iteration_seconds(workload, layout, PROFILE, cluster)
    assert got["student"] == pytest.approx(student, rel=1e-12)
    assert got["critic"] == pytest.approx(critic, rel=1e-12)
    assert got["mean"] == pytest.approx((student + 3 * critic) / 4, rel=1e-12)
    # model FLOPs per GPU: forward equivalents 14.5 (student) and 5.5 (critic), over TP x CP = 1
    flops = forward * PROFILE.matmul_tflops * 1e12 * PROFILE.forward_efficiency * 2 * (14.5 + 3 * 5.5) / 4
    assert model_tflops_per_gpu(workload, layout, got, config) == pytest.approx(flops / got["mean"] / 1e12, rel=1e-12)
    four = model_tflops_per_gpu(workload, Layout(tp=2, cp=2, sp=True), got, config)
    assert four == pytest.approx(flops / got["mean"] / 4e12, rel=1e-12)


def test_kept_attention_recomputes_only_the_rest_of_the_block():
    """Full recompute that keeps the attention outputs reruns the non-attention share of a forward."""
    config = WAN13B.config()
    tokens, d = WAN13B.tokens(config), config.hidden_size
    attention = 4 * tokens**2 * d + 4 * tokens * 512 * d
    share = config.num_layers * attention / (_forward(config, tokens) * PROFILE.matmul_tflops * 1e12
                                             * PROFILE.forward_efficiency)
    got = pass_seconds(config, WAN13B, Layout(keep_attention=True), PROFILE, Cluster(1, 80))
    assert got["train"] == pytest.approx(got["forward"] * (1 + 2 + (1 - share)), rel=1e-12)


def test_usable_memory_leaves_the_larger_of_2_gib_and_5_percent():
    assert usable_gib(Cluster(1, 80)) == 76.0 and usable_gib(Cluster(1, 24)) == 22.0


def test_all_to_all_cp_needs_the_heads_of_one_tp_rank_divisible_by_it():
    """Wan 14B has 40 heads: TP 8 leaves 5 per rank, so all-to-all CP 2 is refused and the ring is not."""
    check_layout(WAN14B, Layout(tp=4, cp=2, sp=True))
    with pytest.raises(PlanError, match="5 heads per TP rank"):
        check_layout(WAN14B, Layout(tp=8, cp=2, sp=True))
    check_layout(WAN14B, Layout(tp=8, cp=2, sp=True, cp_mode="p2p"))


def test_candidate_layouts_keep_tp_in_a_node_and_offer_both_cp_modes():
    layouts = candidate_layouts(WAN14B, Cluster(16, 80, gpus_per_node=4))
    assert {lay.tp for lay in layouts} == {1, 2, 4}
    assert {(lay.cp_mode, lay.cp > 1) for lay in layouts} == {("a2a", False), ("a2a", True), ("p2p", True)}
    assert all(lay.gpus == 16 and lay.sp == (lay.tp > 1) for lay in layouts)


def test_the_sp_gather_buffer_and_the_optimizer_steps_temporary():
    """Under SP megatron's gather buffer holds primal and tangent of a sample's [tokens / CP, hidden] bf16 stream;
    AdamW's foreach step holds one fp32 temporary of the rank's 1/(DP x CP) buffer shard."""
    config = WAN13B.config()
    workload = Workload("wan2.1-t2v-1.3b", micro_batch_size=3)
    for layout in (Layout(tp=2, cp=2, dp=2, sp=True), Layout(cp=2, dp=4)):
        memory = peak_memory(workload, layout, DEFAULT_PROFILE)
        buffer = state_bytes(config, layout)["student"]["gradients"] // 4
        assert memory["optimizer_step"] == 4 * buffer // (layout.dp * layout.cp)
        assert memory["sp_buffer"] == (2 * 3 * 32760 / 2 * config.hidden_size * 2 if layout.sp else 0)


def test_tokens_are_padded_to_a_multiple_of_cp_times_tp_under_sp():
    from megatron_rcm.planning.memory import padded_tokens

    assert padded_tokens(32761, Layout(tp=2, cp=2, sp=True)) == 32764
    assert padded_tokens(32761, Layout(tp=2, cp=3)) == 32763 and padded_tokens(32761, Layout(tp=2)) == 32761
