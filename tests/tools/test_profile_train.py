"""tools/profile_train.py: the real trainer's iterations broken down by the training layer's
profiler ranges (on CPU, tiny model), and the attribution rules on a hand-built CUDA trace."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import profile_train  # noqa: E402

STUDENT_PHASES = {"teacher", "student_jvp", "student_train", "student_rollout", "fake_score", "optimizer", "ema",
                  "data", "idle"}
CRITIC_PHASES = {"student_rollout", "fake_score", "optimizer", "data", "idle"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "profile.json"
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "tools/profile_train.py", "--smoke", "--json", str(out)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text()), result.stdout


def test_one_student_and_one_critic_iteration_add_up_to_the_logged_time(smoke):
    result, stdout = smoke
    student, critic = result["iterations"]
    assert (student["network"], critic["network"]) == ("student", "fake_score")
    for it in (student, critic):
        total = sum(p["ms"] for p in it["phases"].values())
        assert abs(total - it["profiled_ms"]) <= 1e-6 * it["profiled_ms"]
        # the profiled range is the span the trainer times and logs
        assert abs(it["profiled_ms"] / 1000 - it["logged_seconds"]) <= 0.02 * it["logged_seconds"] + 0.005
        assert 0 < it["busy_ms"] <= it["profiled_ms"]
    for it, expected in ((student, STUDENT_PHASES), (critic, CRITIC_PHASES)):
        present = {key for key, p in it["phases"].items() if p["ms"] > 0}
        assert expected <= present, (it["network"], expected - present)
    # a critic iteration calls neither the teacher nor the student with grad, and updates no EMA
    assert not {"teacher", "student_jvp", "student_train", "ema"} & {
        key for key, p in critic["phases"].items() if p["ms"] > 0}
    assert "| **iteration** |" in stdout and "top 15 operators" in stdout


def _event(cat, name, ts, dur, tid=1, correlation=None):
    event = {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "pid": 1}
    if correlation is not None:
        event["args"] = {"correlation": correlation}
    return event


def test_backward_kernels_go_to_the_backward_range_and_nccl_to_communication():
    """Kernels launched from autograd's thread (2) count in the main thread's backward range; an
    NCCL kernel counts as communication; overlapping streams are subtracted once; gaps are idle."""
    events = [_event("user_annotation", "rcm/iteration", 0, 100),
              _event("user_annotation", "rcm/student/grad", 5, 20),
              _event("user_annotation", "rcm/student/backward", 30, 60)]
    launches = [(1, 10, 1, "gemm", 20, 10), (2, 35, 2, "gemm_backward", 40, 30),
                (3, 36, 2, "ncclDevKernel_AllReduce", 60, 20), (4, 95, 1, "adam", 95, 10)]
    for correlation, launch_ts, tid, name, start, dur in launches:
        events.append(_event("cuda_runtime", "cudaLaunchKernel", launch_ts, 1, tid=tid, correlation=correlation))
        events.append(_event("kernel", name, start, dur, tid=7, correlation=correlation))
    (it,) = profile_train.breakdown(events, cuda=True)
    phases = it["phases_us"]
    assert phases["student_train"] == 10 + 30  # the forward's gemm and the backward's, from thread 2
    assert phases["communication"] == 20
    assert phases["other"] == 5  # launched outside any network range, cut at the iteration's end
    assert phases["overlap"] == -10  # the NCCL kernel ran beside the backward gemm for 10 us
    assert it["busy_us"] == 10 + 40 + 5 and phases["idle"] == 100 - 55
    assert sum(phases.values()) == it["window_us"] == 100
    assert it["classes_us"] == {"matmul": 10 + 30, "communication": 20, "other": 5}
    # the idle time, gap by gap: each with the work on either side and the phase of the work after it
    found = it["gaps"]
    assert sum(c["us"] for c in found["classes"]) == phases["idle"]
    assert [c["count"] for c in found["classes"]] == [0, 3, 0, 0]  # 10, 15 and 20 us: all in [10, 100)
    assert [(g["us"], g["phase"], g["before"], g["after"]) for g in found["largest"]] == [
        (20, "student_train", "(iteration start)", "gemm"), (15, "other", "ncclDevKernel_AllReduce", "adam"),
        (10, "student_train", "gemm", "gemm_backward")]


@pytest.mark.parametrize("name, kind", [
    ("_flash_jvp_hopper_kernel", "attention_jvp"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_kernel0_0", "attention"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false>>", "attention"),
    ("nvjet_sm90_tst_256x160_64x4_2x1_v_bz_coopA_TNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "matmul"),
    ("triton_poi_fused_add_gelu_0", "compiled"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1", "compiled"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "FusedOptimizerTensorListMetadata<4>, FusedAdamMathFunctor<float, 4>>", "optimizer_kernels"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float>>>",
     "reduction"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::lerp_kernel_scalar_weight>", "elementwise"),
    ("Memcpy HtoD (Pinned -> Device)", "copy"),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", "communication"),
    ("some_custom_kernel", "other"),
])
def test_kernels_are_classed_by_name(name, kind):
    assert profile_train.kernel_class(name) == kind


def test_the_host_work_of_a_large_gap_is_listed_innermost_first():
    """A 40 us device gap under a 38 us host sync inside a 60 us range: both named, the sync first;
    a host event that covers under a quarter of the gap is left out."""
    events = [_event("user_annotation", "rcm/iteration", 0, 100),
              _event("user_annotation", "rcm/student/grad", 5, 60),
              _event("cuda_runtime", "cudaStreamSynchronize", 31, 38),
              _event("cpu_op", "aten::empty", 40, 5)]
    for correlation, (name, start, dur) in enumerate((("gemm", 10, 20), ("memset", 70, 30)), start=1):
        events.append(_event("cuda_runtime", "cudaLaunchKernel", start - 1, 1, correlation=correlation))
        events.append(_event("kernel", name, start, dur, tid=7, correlation=correlation))
    (it,) = profile_train.breakdown(events, cuda=True)
    gap = it["gaps"]["largest"][0]
    assert (gap["us"], gap["before"], gap["after"]) == (40, "gemm", "memset")
    assert [name for name, _, _ in gap["host"]] == ["cudaStreamSynchronize", "rcm/student/grad", "rcm/iteration"]
    assert any(line.startswith("host work during the 0.04 ms gap (innermost first): `cudaStreamSynchronize` 0.04 ms")
               for line in profile_train._gap_lines(it["gaps"], {}))


@pytest.mark.parametrize("interpret, extra, message", [
    ("0", [], "profile_train: error: no CUDA device: the sCM term's attention JVP kernel runs on CPU only"),
    ("1", ["--", "--recompute-num-layers", "abc"], "invalid int value: 'abc'"),
], ids=["no-gpu-no-interpreter", "bad-trainer-flag"])
def test_a_setup_the_trainer_refuses_ends_in_one_line(tmp_path, interpret, extra, message):
    work = tmp_path / "work"
    env = dict(os.environ, TRITON_INTERPRET=interpret, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "tools/profile_train.py", "--smoke", "--work", str(work),
                             "--json", str(tmp_path / "out.json"), *extra],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    stderr = result.stderr
    assert result.returncode != 0 and message in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert not (tmp_path / "out.json").exists() and not (work / "profile-trace.json").exists()


def test_compiled_graphs_are_counted_per_iteration_and_function_with_their_recompile_reasons():
    """Dynamo's real metrics of three iterations: the first compiles a forward graph and, at its
    backward, a backward graph; the second recompiles for a new dtype; the third compiles nothing."""
    import time

    import torch
    from torch._dynamo.utils import get_compilation_metrics

    def scaled_gelu(x):
        return torch.nn.functional.gelu(x) * 3

    torch._dynamo.reset()
    compiled = torch.compile(scaled_gelu, backend="aot_eager")
    before = len(get_compilation_metrics())
    ends = [time.time()]
    compiled(torch.randn(4, 8, requires_grad=True)).sum().backward()
    ends.append(time.time())
    compiled(torch.randn(6, 8, dtype=torch.float64))
    ends.append(time.time())
    compiled(torch.randn(6, 8, dtype=torch.float64))
    ends.append(time.time())
    metrics = get_compilation_metrics()[before:]
    graphs = profile_train.compiled_graphs(metrics, ends)
    assert {i: r["graphs"] for i, r in graphs["per_iteration"].items()} == {1: 2, 2: 1}
    name = f"test_profile_train.py:{scaled_gelu.__code__.co_firstlineno} scaled_gelu"
    assert {n: r["graphs"] for n, r in graphs["per_function"].items()} == {name: 2, "(backward graphs)": 1}
    assert graphs["recompile_reasons"] == [("tensor 'x' dtype mismatch. expected Float, actual Double", 1)]
    total = sum(r["seconds"] for r in graphs["per_iteration"].values())
    assert total == pytest.approx(sum(m.duration_us for m in metrics) / 1e6)
    assert 0 < graphs["per_iteration"][2]["seconds"] <= ends[2] - ends[1]
    lines = profile_train.compile_lines(graphs, [("student", 9.5), ("fake_score", 3.25), ("student", 8.0)])
    assert "| 1 | student | 9.50 | 2 |" in "\n".join(lines)
    assert any(line.startswith(f"| `{name}` | 2 |") for line in lines)


def test_triton_compilations_are_counted_per_iteration_and_kernel():
    """(end, name, seconds, cache hit) records land in the iteration whose span holds their end."""
    ends = [100.0, 150.0, 160.0]
    compiles = [(120.0, "_flash_jvp_hopper_kernel", 6.5, False), (121.0, "_bias_gelu_backward_kernel", 0.75, False),
                (155.0, "_flash_jvp_hopper_kernel", 0.25, True)]
    jit = profile_train.jit_kernels(compiles, ends)
    assert jit["per_iteration"] == {1: {"compiles": 2, "seconds": 7.25, "cache_hits": 0},
                                    2: {"compiles": 1, "seconds": 0.25, "cache_hits": 1}}
    assert list(jit["per_kernel"]) == ["_flash_jvp_hopper_kernel", "_bias_gelu_backward_kernel"]
    assert jit["per_kernel"]["_flash_jvp_hopper_kernel"] == {"compiles": 2, "seconds": 6.75, "cache_hits": 1}
    lines = "\n".join(profile_train.jit_lines(jit, [("student", 51.5), ("fake_score", 2.5)]))
    assert "| 1 | student | 2 | 0 | 7.2 |" in lines and "| `_bias_gelu_backward_kernel` | 1 | 0 | 0.8 |" in lines
