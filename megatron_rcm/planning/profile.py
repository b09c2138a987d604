"""The measured coefficients behind the planner's time and activation models, and their JSON file.

``DEFAULT_PROFILE`` comes from the H200 measurements in docs/benchmarks.md (Wan 1.3B, 32760 tokens,
bf16, Hopper attention kernel; see docs/planning.md for each derivation). ``tools/plan.py
--calibrate`` measures the same coefficients on the local GPU(s) at the width being planned and
writes them with ``save_profile``; ``--profile FILE`` reads them back.
"""

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Profile:
    """Per-card coefficients; every time and activation figure the planner prints derives from these."""

    device: str = "NVIDIA H200 (docs/benchmarks.md, 7205aef)"
    """Where the coefficients were measured."""
    matmul_tflops: float = 785.0
    """Dense bf16 matmul rate per GPU (8192^3, tools/bench_train.py's measurement)."""
    forward_efficiency: float = 0.694
    """Model FLOP/s of a Wan forward over the matmul rate (1.3B: 2.83e14 FLOPs in 0.519 s)."""
    jvp_ratio: float = 2.62
    """Forward+JVP time over forward time (1.359 s / 0.519 s)."""
    backward_ratio: float = 2.63
    """Backward time over forward time (forward+backward 3.62x; with recompute 4.65x = 2 + 2.65)."""
    tp_bandwidth_gbs: float = 220.0
    """Effective bandwidth of the sequence-parallel all-gathers / reduce-scatters within a node
    (TP=2 forward 0.306 s against 0.530 / 2 on one GPU: 41 ms for 30 x 6 x 50 MB)."""
    cp_a2a_bandwidth_gbs: float = 102.0
    """Effective bandwidth of the all-to-all context-parallel exchange within a node (CP=2: 0.289 s)."""
    cp_p2p_bandwidth_gbs: float = 85.0
    """Effective bandwidth of the ring (p2p) context-parallel exchange within a node (CP=2: 0.295 s)."""
    inter_node_bandwidth_gbs: float = 40.0
    """Per-GPU bandwidth between nodes (not measured here: 400 Gb/s per GPU at 80%)."""
    hbm_bandwidth_gbs: float = 3000.0
    """Effective memory bandwidth of the optimizer and EMA updates (not measured: 60% of 4.8 TB/s)."""
    host_bandwidth_gbs: float = 20.0
    """Host <-> GPU copy bandwidth for offloaded EMA / teacher (not measured here)."""
    iteration_overhead_s: float = 0.36
    """Per-iteration time outside the network passes (1-GPU 1.3B run: measured minus modelled)."""
    activation_outer_bytes: float = 18.0
    """Saved bytes per residual-stream token and hidden channel of one block (split over TP under
    SP), with the cross-attention norm of Wan2.1 (2 fewer without it)."""
    activation_inner_bytes: float = 21.0
    """Saved bytes per token and hidden channel inside the TP regions (split over TP)."""
    activation_ffn_bytes: float = 4.0
    """Saved bytes per token and FFN channel (split over TP)."""
    backward_working_factor: float = 1.43
    """Peak working memory of one block's backward, in units of its saved activations."""

    def __post_init__(self):
        for field in fields(self)[1:]:  # every coefficient after ``device``
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"profile {field.name} must be a positive number, got {value!r}")


DEFAULT_PROFILE = Profile()


def load_profile(path) -> Profile:
    """A Profile from a JSON file written by ``save_profile``; unknown keys are an error."""
    with open(path) as f:
        values = json.load(f)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a profile is a JSON object, got {type(values).__name__}")
    known = {f.name for f in fields(Profile)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown profile keys {unknown}; known: {sorted(known)}")
    return Profile(**values)


def save_profile(profile: Profile, path) -> None:
    """Write the profile as JSON, atomically (temporary file, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
        json.dump(asdict(profile), f, indent=1)
    os.replace(f.name, path)
