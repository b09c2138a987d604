"""The attention JVP kernel compiles for Hopper (sm_90a) at every launch config autotuning weighs,
without a GPU: Triton's compiler and its ptxas, in a process with TRITON_INTERPRET unset. This
catches code the interpreter runs but the compiler rejects, before any GPU time is spent. It also
catches ptxas warnings such as serialized wgmma, which cost speed without changing results."""

import os
import subprocess
import sys

import pytest


def _rows(table):
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and line[2].isdigit()]


@pytest.mark.parametrize("variant", [[], ["--constant-kv"]], ids=["tangents", "constant_kv"])
def test_tuned_configs_and_their_descriptor_variants_compile_for_hopper_without_ptxas_warnings(variant):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "megatron_rcm.kernels.static_build", "--arch", "90",
                             "--head-dim", "128", "--tma", *variant], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(result.stdout)
    assert len(rows) >= 4 and {row[4] for row in rows} == {"False", "True"}, result.stdout
    for block_m, block_n, warps, stages, descriptors, registers, spills, warnings in rows:
        assert int(registers) <= 255 and warnings == "-", result.stdout


@pytest.mark.parametrize("variant", [[], ["--constant-kv"], ["--head-dim", "64"]],
                         ids=["tangents", "constant_kv", "head_dim_64"])
def test_hopper_kernel_compiles_for_sm90a_within_registers_and_shared_memory(variant):
    """The Gluon kernel has no interpreter: compiling it is the CPU check that it still builds."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "megatron_rcm.kernels.static_build", "--hopper-kernel", *variant],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    from megatron_rcm.kernels.flash_jvp_hopper import CANDIDATES, CONFIGS, fits

    rows = _rows(result.stdout)
    kv_tangent = "--constant-kv" not in variant
    head_dim = int(variant[-1]) if "--head-dim" in variant else 128
    assert len(rows) == sum(fits(c, head_dim, kv_tangent) for c in CANDIDATES) >= 10, result.stdout
    in_configs = {c for c in CONFIGS.values() if fits(c, head_dim, kv_tangent)}
    assert [row[5] for row in rows].count("True") == len(in_configs), result.stdout
    for block_m, block_n, stages, early, peel, in_configs, registers, spills, shared_kib, warnings in rows:
        assert int(registers) <= 255 and float(shared_kib) <= 227 and warnings == "-", result.stdout
