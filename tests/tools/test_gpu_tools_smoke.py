"""The GPU benchmark and tuning tools run end to end on a tiny CPU case (their --cpu-smoke modes):
GPU time is scarce, and a tool that breaks should break here first."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("command,expected", [
    (["tools/tune_flash_jvp.py", "--cpu-smoke"], "| triton | triton 32x16 w4 s2 tma |"),
    (["tools/bench_attention.py", "--cpu-smoke"], "out_t rel. error"),
    (["tools/bench_plain_attention.py", "--cpu-smoke"], "| tiny | models | "),
    (["tools/bench_elementwise.py", "--cpu-smoke"], "| bias_gelu | backward | "),
    (["tools/bench_wan.py", "--cpu-smoke"], "jvp_bf16_vs_fp32"),
    (["tools/bench_cosmos.py", "--smoke", "--profile"], "Profile, diffusers forward"),
    (["tools/bench_generate.py", "--smoke"], "speed-up: end to end"),
    (["tools/bench_generate.py", "--smoke", "--preset", "cosmos-predict2-2b", "--num-frames", "1"],
     "(cpu, cosmos-tiny-a, TP=1, CP=1)"),
    (["tools/bench_encoders.py", "--smoke"], "teacher-synthetic samples per minute"),
    (["tools/validate_plan.py", "--smoke"], "| smoke |"),
], ids=lambda c: c[0] if isinstance(c, list) else "")
def test_tool_cpu_smoke(command, expected):
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout, result.stdout[-2000:]
