"""Enumerate the layouts of a cluster, predict memory and time for each, rank those that fit."""

from dataclasses import asdict, dataclass, replace

from .memory import GIB, peak_memory
from .profile import Profile
from .timing import iteration_seconds, model_tflops_per_gpu, samples_per_second
from .workload import MIN_TOKENS_PER_CP_RANK, Cluster, Layout, PlanError, Workload, check_layout

# memory the planner leaves free on each GPU: CUDA context, allocator fragmentation, NCCL buffers
RESERVE_GIB = 2.0
RESERVE_FRACTION = 0.05
# memory-saving options in the order they are given up for speed: each variant of a layout costs more time.
# Between "none" and each "full" variant, ``plan`` adds megatron-core's "block" recompute of the
# fewest blocks that fit (``fewest_recomputed_blocks``)
SAVINGS = ({"recompute": "none"}, {"recompute": "full"}, {"recompute": "full", "offload_ema": True},
           {"recompute": "full", "offload_ema": True, "offload_teacher": True})
MAX_SEARCHED_GPUS = 4096


@dataclass(frozen=True)
class Constraints:
    """Sizes the user fixed; None leaves them to the planner."""

    tp: int = None
    """Tensor-parallel size."""
    cp: int = None
    """Context-parallel size."""
    cp_mode: str = None
    """"a2a" or "p2p"."""
    global_batch_size: int = None
    """Fixes DP = global batch / micro batch."""


def usable_gib(cluster: Cluster) -> float:
    return cluster.gpu_memory_gib - max(RESERVE_GIB, RESERVE_FRACTION * cluster.gpu_memory_gib)


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(workload: Workload, cluster: Cluster, constraints: Constraints = Constraints(), config=None,
                      keep_attention: bool = False):
    """Every layout of ``cluster.gpus`` GPUs the model can run (TP within a node), all savings variants;
    with ``keep_attention`` each recomputing variant also keeping its attention outputs."""
    config = config or workload.config()
    out = []
    for tp in _divisors(cluster.gpus):
        if tp > cluster.gpus_per_node or (constraints.tp and tp != constraints.tp):
            continue
        for cp in _divisors(cluster.gpus // tp):
            if constraints.cp and cp != constraints.cp:
                continue
            dp = cluster.gpus // (tp * cp)
            if constraints.global_batch_size and dp * workload.micro_batch_size != constraints.global_batch_size:
                continue
            for cp_mode in (("a2a", "p2p") if cp > 1 else ("a2a",)):
                if constraints.cp_mode and cp > 1 and cp_mode != constraints.cp_mode:
                    continue
                for saving in SAVINGS:
                    keeps = (False, True) if keep_attention and saving["recompute"] != "none" else (False,)
                    for keep in keeps:
                        layout = Layout(tp=tp, cp=cp, dp=dp, cp_mode=cp_mode, sp=tp > 1, keep_attention=keep, **saving)
                        try:
                            check_layout(workload, layout, config)
                        except PlanError:
                            continue
                        out.append(layout)
    return out


def predict(workload: Workload, layout: Layout, cluster: Cluster, profile: Profile, config=None) -> dict:
    """One layout's predictions, JSON-ready."""
    config = config or workload.config()
    memory = peak_memory(workload, layout, profile, config)
    seconds = iteration_seconds(workload, layout, profile, cluster, config)
    peak = memory["peak"] / GIB
    return {
        **asdict(layout), "gpus": layout.gpus, "peak_memory_gib": round(peak, 2),
        "fits": peak <= usable_gib(cluster),
        "student_seconds": round(seconds["student"], 3), "critic_seconds": round(seconds["critic"], 3),
        "samples_per_second": round(samples_per_second(workload, layout, seconds), 4),
        "model_tflops_per_gpu": round(model_tflops_per_gpu(workload, layout, seconds, config), 1),
        "host_memory_gib_per_gpu": round(memory["states_host"] / GIB, 2),
        "memory_gib": {name: {"gib": round(sum(v for k, v in parts.items() if k != "where") / GIB, 2),
                              "where": parts["where"]} for name, parts in memory["networks"].items()},
        "flags": layout.flags(),
    }


def _check_request(workload, cluster, constraints, config):
    """Refusals that no enumeration could get around, each one line saying what to change."""
    if cluster.gpus < 1 or cluster.gpu_memory_gib <= 0:
        raise PlanError("--gpus and --gpu-memory-gib must be positive")
    if workload.micro_batch_size < 1:
        raise PlanError("--micro-batch-size must be positive")
    if cluster.gpus > cluster.gpus_per_node and cluster.gpus % cluster.gpus_per_node:
        raise PlanError(f"{cluster.gpus} GPUs do not fill whole nodes of {cluster.gpus_per_node}; "
                        f"use a multiple of {cluster.gpus_per_node} (or set --gpus-per-node)")
    tp, cp = constraints.tp or 1, constraints.cp or 1
    check_layout(workload, Layout(tp=tp, cp=cp, sp=tp > 1, cp_mode=constraints.cp_mode or "p2p"), config)
    tokens = workload.tokens(config)
    max_cp = tokens // MIN_TOKENS_PER_CP_RANK
    max_tp = max(t for t in _divisors(config.num_attention_heads) if t <= cluster.gpus_per_node)
    if constraints.global_batch_size:
        if constraints.global_batch_size % workload.micro_batch_size:
            raise PlanError(f"--global-batch-size {constraints.global_batch_size} is not a multiple of the "
                            f"micro batch {workload.micro_batch_size}")
        dp = constraints.global_batch_size // workload.micro_batch_size
        usable = (constraints.tp or max_tp) * (constraints.cp or max_cp) * dp
        if cluster.gpus > usable:
            raise PlanError(f"{cluster.gpus} GPUs are more than this model can use at global batch "
                            f"{constraints.global_batch_size}: at most TP {constraints.tp or max_tp} x CP "
                            f"{constraints.cp or max_cp} x DP {dp} = {usable}; use fewer GPUs or a larger batch")
    for name, size in (("TP", constraints.tp), ("CP", constraints.cp)):
        if size and cluster.gpus % size:
            raise PlanError(f"{name} {size} does not divide {cluster.gpus} GPUs")


def _fewest(fits, low, high):
    """The least n in low..high with fits(n), for fits monotone in n; None if not even fits(high)."""
    if high < low or not fits(high):
        return None
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle + 1, high)
    return low


def fewest_recomputed_blocks(workload: Workload, layout: Layout, cluster: Cluster, profile: Profile, config=None):
    """``layout`` (full recompute) with "block" recompute of the fewest blocks that fit the cluster's
    GPUs, keeping the activations of the others; None if only full recompute (or none at all) fits.
    The student's count comes first, then the fake score's (at most the student's: its backward
    holds one graph, the student's two). Peak memory falls as more blocks are recomputed, so
    bisections find the counts."""
    config = config or workload.config()
    usable = usable_gib(cluster) * GIB

    def fits(student, fake_score):
        variant = replace(layout, recompute="block", recompute_blocks=student, fake_score_recompute_blocks=fake_score)
        return peak_memory(workload, variant, profile, config)["peak"] <= usable

    student = _fewest(lambda n: fits(n, n), 1, config.num_layers - 1)
    if student is None:
        return None
    fake_score = _fewest(lambda n: fits(student, n), 1, student)
    return replace(layout, recompute="block", recompute_blocks=student, fake_score_recompute_blocks=fake_score)


def plan(workload: Workload, cluster: Cluster, profile: Profile, constraints: Constraints = Constraints(),
         keep_attention: bool = False):
    """All layouts of the cluster with predictions, those that fit first, fastest (most samples/s) first;
    ``keep_attention`` also scores recompute that keeps the attention outputs."""
    config = workload.config()
    _check_request(workload, cluster, constraints, config)
    layouts = candidate_layouts(workload, cluster, constraints, config, keep_attention)
    blocks = (fewest_recomputed_blocks(workload, layout, cluster, profile, config)
              for layout in layouts if layout.recompute == "full")
    rows = [predict(workload, layout, cluster, profile, config)
            for layout in layouts + [b for b in blocks if b is not None]]
    if not rows:
        raise PlanError(f"no layout of {cluster.gpus} GPUs satisfies the given sizes; relax --tp/--cp/--cp-mode "
                        f"or --global-batch-size")
    return sorted(rows, key=lambda r: (not r["fits"], -r["samples_per_second"], r["peak_memory_gib"]))


def cluster_sizes(gpus_per_node: int):
    """The GPU counts searched for the smallest cluster: 1..one node, then powers of two of nodes."""
    counts = list(range(1, gpus_per_node + 1))
    nodes = 2
    while nodes * gpus_per_node <= MAX_SEARCHED_GPUS:
        counts.append(nodes * gpus_per_node)
        nodes *= 2
    return counts


def smallest_cluster(workload: Workload, cluster: Cluster, profile: Profile, constraints: Constraints = Constraints(),
                     keep_attention: bool = False):
    """The smallest searched GPU count (``cluster_sizes``) at which some layout fits, with its best
    layout; None if none up to MAX_SEARCHED_GPUS does. A fixed global batch is kept where some
    cluster fits with it, else let go: data parallelism then grows with the cluster (the row's dp)."""
    found = _smallest_cluster(workload, cluster, profile, constraints, keep_attention)
    if found is None and constraints.global_batch_size:
        free = Constraints(constraints.tp, constraints.cp, constraints.cp_mode)
        found = _smallest_cluster(workload, cluster, profile, free, keep_attention)
    return found


def _smallest_cluster(workload, cluster, profile, constraints, keep_attention):
    for gpus in cluster_sizes(cluster.gpus_per_node):
        bigger = Cluster(gpus, cluster.gpu_memory_gib, cluster.gpus_per_node)
        try:
            rows = plan(workload, bigger, profile, constraints, keep_attention)
        except PlanError:  # e.g. more GPUs than a fixed global batch can use
            continue
        if rows[0]["fits"]:
            return rows[0]
    return None
