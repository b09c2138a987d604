"""Seconds per student and per critic iteration of one rCM layout.

Network passes are counted in forward equivalents of one Wan forward (``wan_forward_flops``),
timed at the Profile's matmul rate and forward efficiency, with the
JVP and the backward as measured multiples of the forward. Collectives are modelled by the bytes
they move over the Profile's effective bandwidths: per block 6 sequence-parallel all-gathers /
reduce-scatters of the token stream over TP, and 4 all-to-alls (or the ring's key/value passes)
over CP; once per update the data-parallel reduce-scatter of the fp32 gradients and all-gather
of the parameters. Offloads add their host copies.

Passes of a student iteration (docs/math.md section 4): guided teacher (batch 2), student JVP,
student forward+backward (sCM); rollout of n steps (n - 1 without grad, the last with backward;
n cycles 1..4), guided teacher, fake score (DMD). Critic iteration: rollout without grad, fake
score forward+backward.
"""

from .memory import BF16, FP32, ddp_buffer_numel, ema_shard_numel, local_parameter_numels, padded_tokens
from .profile import Profile
from .workload import Cluster, Layout, Workload

MEAN_ROLLOUT_STEPS = 2.5  # n cycles through 1, 2, 3, 4
TP_COLLECTIVES_PER_BLOCK = 6  # all-gather before and reduce-scatter after self-attn, cross-attn, FFN
A2A_PER_BLOCK = 4  # q, k, v in; output back
OPTIMIZER_BYTES_PER_ELEMENT = 36  # AdamW reads and writes 3 fp32 states, reads the gradient, writes the bf16 param


# network passes of one iteration in forward equivalents, for model FLOPs (recompute not counted):
# student = guided teacher 2 + JVP 2 + forward and backward 3 + DMD (rollout n - 1 + 3, guided
# teacher 2, fake score 1); critic = rollout n + fake score forward and backward 3
FORWARD_EQUIVALENTS = {"student": 2 + 2 + 3 + (MEAN_ROLLOUT_STEPS - 1) + 3 + 2 + 1, "critic": MEAN_ROLLOUT_STEPS + 3}


def wan_forward_flops(config, tokens: int, text_len: int) -> float:
    """Model FLOPs of one Wan forward of one sample: per block 8Nd^2 + 4N^2d (self-attention),
    4Nd^2 + 4NLd (cross-attention to L text tokens), 4Ndf (FFN)."""
    d, f = config.hidden_size, config.ffn_hidden_size
    return config.num_layers * (12 * tokens * d * d + _attention_flops(d, tokens, text_len) + 4 * tokens * d * f)


def _attention_flops(d, tokens, text_len):
    """Of one block's self-attention (q k^T and p v) and cross-attention to ``text_len`` tokens."""
    return 4 * tokens**2 * d + 4 * tokens * text_len * d


def attention_share(config, tokens: int, text_len: int) -> float:
    """Attention's share of a forward's time, taken as its share of the FLOPs (Wan-1.3B at 32760
    tokens: 71%; the H200 profile in docs/benchmarks.md measured 70% of the device time)."""
    attention = _attention_flops(config.hidden_size, tokens, text_len)
    return config.num_layers * attention / wan_forward_flops(config, tokens, text_len)


def _bandwidth(profile: Profile, intra_gbs: float, group_span: int, cluster: Cluster) -> float:
    """Bytes/s of a group of ``group_span`` consecutive ranks: within a node or across nodes."""
    gbs = intra_gbs if group_span <= cluster.gpus_per_node else min(intra_gbs, profile.inter_node_bandwidth_gbs)
    return gbs * 1e9


def pass_seconds(config, workload: Workload, layout: Layout, profile: Profile, cluster: Cluster,
                 network: str = "student") -> dict:
    """Seconds of one pass of one sample per kind: "forward", "jvp", "train" (forward+backward of ``network``)."""
    tokens = workload.tokens(config)
    padded = padded_tokens(tokens, layout)
    forward = wan_forward_flops(config, tokens, workload.text_len) / (layout.tp * layout.cp)
    forward /= profile.matmul_tflops * 1e12 * profile.forward_efficiency
    recompute = layout.recomputed_blocks(config.num_layers, network) / config.num_layers  # share of a forward again
    # kept attention outputs: the recompute runs everything but attention (its collectives included)
    recompute_compute = (recompute * (1 - attention_share(config, tokens, workload.text_len))
                         if layout.keep_attention else recompute)
    compute = {"forward": forward, "jvp": forward * profile.jvp_ratio,
               "train": forward * (1 + profile.backward_ratio + recompute_compute)}
    # bytes each rank moves per block in one forward
    d, tp, cp, L = config.hidden_size, layout.tp, layout.cp, config.num_layers
    comm = 0.0
    if tp > 1:
        volume = TP_COLLECTIVES_PER_BLOCK * (tp - 1) / tp * padded / cp * d * BF16
        comm += L * volume / _bandwidth(profile, profile.tp_bandwidth_gbs, tp, cluster)
    if cp > 1:
        chunk = padded / cp * d / tp * BF16
        if layout.cp_mode == "a2a":
            volume, gbs = A2A_PER_BLOCK * (cp - 1) / cp * chunk, profile.cp_a2a_bandwidth_gbs
        else:
            volume, gbs = 2 * (cp - 1) * chunk, profile.cp_p2p_bandwidth_gbs
        comm += L * volume / _bandwidth(profile, gbs, tp * cp, cluster)
    # the JVP carries primal and tangent; a backward repeats the forward's collectives (recompute: twice)
    multiples = {"forward": 1, "jvp": 2, "train": 2 + recompute}
    return {kind: compute[kind] + multiples[kind] * comm for kind in compute}


def _update_seconds(config, layout: Layout, profile: Profile, cluster: Cluster) -> float:
    """Optimizer step and the data-parallel gradient/parameter exchange of one network."""
    dp_cp = layout.dp * layout.cp
    buffer = ddp_buffer_numel(local_parameter_numels(config, layout.tp), dp_cp, True)
    step = OPTIMIZER_BYTES_PER_ELEMENT * buffer / dp_cp / (profile.hbm_bandwidth_gbs * 1e9)
    if dp_cp == 1:
        return step
    exchanged = (dp_cp - 1) / dp_cp * buffer * (FP32 + BF16)
    return step + exchanged / _bandwidth(profile, profile.tp_bandwidth_gbs, cluster.gpus, cluster)


def iteration_seconds(workload: Workload, layout: Layout, profile: Profile, cluster: Cluster, config=None) -> dict:
    """{"student": s, "critic": s, "mean": s per iteration over the update cycle}."""
    config = config or workload.config()
    p = pass_seconds(config, workload, layout, profile, cluster)
    fake_score_train = pass_seconds(config, workload, layout, profile, cluster, "fake_score")["train"]
    b = workload.micro_batch_size
    rollout = (MEAN_ROLLOUT_STEPS - 1) * p["forward"]
    student = b * (2 * p["forward"] + p["jvp"] + p["train"] + rollout + p["train"] + 2 * p["forward"] + p["forward"])
    critic = b * (MEAN_ROLLOUT_STEPS * p["forward"] + fake_score_train)
    update = _update_seconds(config, layout, profile, cluster)
    student += update + profile.iteration_overhead_s
    critic += update + profile.iteration_overhead_s
    numels = local_parameter_numels(config, layout.tp)
    host = profile.host_bandwidth_gbs * 1e9
    if layout.offload_ema:  # the EMA shard visits the GPU for its update and goes back
        student += 2 * FP32 * ema_shard_numel(numels, layout.dp * layout.cp) / host
    if layout.offload_teacher:  # copied in for each of its two calls
        student += 2 * BF16 * sum(numels) / host
    freq = workload.student_update_freq
    return {"student": student, "critic": critic, "mean": (student + (freq - 1) * critic) / freq}


def samples_per_second(workload: Workload, layout: Layout, seconds: dict) -> float:
    return layout.dp * workload.micro_batch_size / seconds["mean"]


def model_tflops_per_gpu(workload: Workload, layout: Layout, seconds: dict, config) -> float:
    """Model TFLOP/s per GPU over the update cycle (bench_train.py's forward-equivalent count)."""
    forward = wan_forward_flops(config, workload.tokens(config), workload.text_len) * workload.micro_batch_size
    freq = workload.student_update_freq
    flops = forward * (FORWARD_EQUIVALENTS["student"] + (freq - 1) * FORWARD_EQUIVALENTS["critic"]) / freq
    return flops / seconds["mean"] / (layout.tp * layout.cp) / 1e12
