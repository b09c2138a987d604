"""Bytes per GPU of one rCM layout: the four networks' states counted exactly, activations per block.

States (``state_bytes``), per rank, from the weight map of the model (``wan_parameters``: which
tensors TP splits) and the layouts megatron-core and ``training.ema`` give them:

* teacher: its TP shard in the training dtype; frozen (no gradient, no optimizer state);
* student and fake score: parameters, megatron DDP's fp32 gradient buffer (with the distributed
  optimizer, padded as megatron pads it), and Adam state: with the distributed optimizer fp32
  master weights + exp_avg + exp_avg_sq of the rank's 1/(DP x CP) buffer shard (12 bytes a shard
  element), without it (CPU) exp_avg + exp_avg_sq of every local parameter (8 bytes);
* EMA: fp32, the rank's 1/(DP x CP) slice of the flattened local parameters (``ShardedPowerEMA``).

Activations (``activation_bytes``) follow the block's saved tensors, with coefficients from the
Profile: a recomputed block keeps only its input (full recompute: every block; "block": the
first N), plus, when it keeps its attention, the outputs and log-sum-exps of its attention calls;
the backward rebuilds one block at a time.
"""

import math
from dataclasses import dataclass

from .profile import Profile
from .workload import Layout, Workload, parameter_table

GIB = 2**30
FP32 = 4
BF16 = 2  # bytes of a bf16 activation or parameter
# megatron DDP with the distributed optimizer: parameters start at multiples of 64 elements and
# the buffer ends at a multiple of lcm(DP x CP, 128) (param_and_grad_buffer.py)
PARAM_ALIGN, BUFFER_ALIGN = 64, 128
ATTENTION_CALLS_PER_BLOCK = 2  # self- and cross-attention, each over all of the block's queries


def local_parameter_numels(config, tp: int) -> list:
    """Elements of every parameter one TP rank holds, in weight-map order."""
    return [math.prod(shape) // (tp if axis is not None else 1) for shape, axis in parameter_table(config)]


def ddp_buffer_numel(numels, dp_cp: int, distributed_optimizer: bool) -> int:
    """Elements of megatron DDP's gradient (and, with the distributed optimizer, parameter) buffer.

    DDP places parameters in reverse module order, each start padded to 64 elements, and pads the
    end to lcm(DP x CP, 128) so that every rank's shard has the same size. Only the first
    parameter (placed last) keeps its unpadded length.
    """
    if not distributed_optimizer:
        return sum(numels)
    end = sum(math.ceil(n / PARAM_ALIGN) * PARAM_ALIGN for n in numels[1:]) + numels[0]
    align = math.lcm(dp_cp, BUFFER_ALIGN)
    return math.ceil(end / align) * align


def ema_shard_numel(numels, dp_cp: int) -> int:
    """Elements of one rank's EMA slice: the local parameters flattened, split evenly over DP x CP."""
    return math.ceil(sum(numels) / dp_cp)


@dataclass(frozen=True)
class Precision:
    """How the networks are stored."""

    param_bytes: int = 2
    """Bytes per parameter of teacher, student and fake score (bf16 on GPU, 4 for float32)."""
    distributed_optimizer: bool = True
    """megatron's DistributedOptimizer (GPU); False: the CPU FP32 optimizer, unsharded."""


def state_bytes(config, layout: Layout, precision: Precision = Precision()) -> dict:
    """{network: {part: bytes}} of one rank, with "where" (gpu/host) per network."""
    numels = local_parameter_numels(config, layout.tp)
    local = sum(numels)
    dp_cp = layout.dp * layout.cp
    buffer = ddp_buffer_numel(numels, dp_cp, precision.distributed_optimizer)
    if precision.distributed_optimizer:
        trainable = {"parameters": buffer * precision.param_bytes, "gradients": buffer * FP32,
                     "optimizer": 3 * FP32 * buffer // dp_cp}
    else:
        trainable = {"parameters": local * precision.param_bytes, "gradients": buffer * FP32,
                     "optimizer": 2 * FP32 * local}
    return {
        "teacher": {"parameters": local * precision.param_bytes,
                    "where": "host" if layout.offload_teacher else "gpu"},
        "student": dict(trainable, where="gpu"),
        "fake_score": dict(trainable, where="gpu"),
        "ema": {"parameters": FP32 * ema_shard_numel(numels, dp_cp), "where": "host" if layout.offload_ema else "gpu"},
    }


def network_total(parts: dict) -> int:
    return sum(v for k, v in parts.items() if k != "where")


def padded_tokens(tokens: int, layout: Layout) -> int:
    """Tokens after the model pads them to a multiple of CP x (TP under SP)."""
    shards = layout.cp * (layout.tp if layout.sp else 1)
    return math.ceil(tokens / shards) * shards


def activation_bytes(config, tokens: int, layout: Layout, profile: Profile, batch: int) -> dict:
    """Per-rank activation bytes of one block: "saved" (all of its saved tensors, for a backward
    without recompute), "checkpoint" (its input, kept under full recompute) and "kept_attention"
    (what a recomputed block keeps more with ``keep_attention``: each attention call's output,
    bf16 [local tokens, hidden / TP], and fp32 log-sum-exp [heads / TP, local tokens]; under
    all-to-all CP the same bytes, as [all tokens, hidden / (TP x CP)])."""
    local = padded_tokens(tokens, layout) / layout.cp
    stream = local / (layout.tp if layout.sp else 1)
    d, f, tp = config.hidden_size, config.ffn_hidden_size, layout.tp
    outer = profile.activation_outer_bytes - (0 if config.cross_attn_norm else BF16)  # the norm's output
    saved = batch * (stream * outer * d
                     + local * (profile.activation_inner_bytes * d + profile.activation_ffn_bytes * f) / tp)
    kept = ATTENTION_CALLS_PER_BLOCK * batch * local * (d * BF16 + config.num_attention_heads * FP32) / tp
    return {"saved": saved, "checkpoint": batch * stream * d * BF16, "kept_attention": kept}


def training_graph_bytes(config, tokens, layout, profile, batch, network: str = "student") -> float:
    """Peak activation bytes of a backward of one graph of ``network``."""
    block = activation_bytes(config, tokens, layout, profile, batch)
    recomputed = layout.recomputed_blocks(config.num_layers, network)
    kept = block["checkpoint"] + (block["kept_attention"] if layout.keep_attention else 0)
    graph = recomputed * kept + (config.num_layers - recomputed) * block["saved"]
    return graph + profile.backward_working_factor * block["saved"]


def peak_memory(workload: Workload, layout: Layout, profile: Profile, config=None,
                precision: Precision = Precision()) -> dict:
    """Predicted peak allocated bytes per GPU, its parts, and the host bytes per rank."""
    config = config or workload.config()
    tokens = workload.tokens(config)
    states = state_bytes(config, layout, precision)
    on_gpu = sum(network_total(p) for p in states.values() if p["where"] == "gpu")
    on_host = sum(network_total(p) for p in states.values() if p["where"] == "host")
    b = workload.micro_batch_size
    # one graph at a time: the trainer backpropagates the sCM student pass before the DMD rollout
    # builds its graph (losses.rcm.student_loss_terms)
    student = training_graph_bytes(config, tokens, layout, profile, b)
    critic = training_graph_bytes(config, tokens, layout, profile, b, network="fake_score")
    if layout.offload_teacher:  # the teacher is resident during its calls, with the rollout's graph alive
        student += states["teacher"]["parameters"]
    dp_cp = layout.dp * layout.cp
    numels = local_parameter_numels(config, layout.tp)
    # torch's foreach AdamW holds one fp32 temporary per state shard; an offloaded EMA visits the GPU
    optimizer_step = FP32 * ddp_buffer_numel(numels, dp_cp, precision.distributed_optimizer) // dp_cp
    ema_visit = states["ema"]["parameters"] if layout.offload_ema else 0
    # sequence parallelism all-gathers into megatron's global buffer, which stays allocated
    sp_buffer = (2 * b * padded_tokens(tokens, layout) / layout.cp * config.hidden_size * BF16
                 if layout.sp else 0)
    transient = max(student, critic, optimizer_step, ema_visit)
    return {"peak": on_gpu + sp_buffer + transient, "states_gpu": on_gpu, "states_host": on_host,
            "activations_student": student, "activations_critic": critic, "sp_buffer": sp_buffer,
            "optimizer_step": optimizer_step, "networks": states}
