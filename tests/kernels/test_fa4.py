"""kernels.fa4's choice of FlashAttention-4 on any machine: which installs it uses, and what it serves
(the kernels themselves: test_fa4_gpu.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_rcm.kernels import attention, fa4


@pytest.fixture
def fresh_interface():
    for lookup in (fa4._pinned_version_installed, fa4._interface):
        lookup.cache_clear()
    yield
    for lookup in (fa4._pinned_version_installed, fa4._interface):
        lookup.cache_clear()


def _install_metadata(path, version):
    """A flash-attn-4 distribution's metadata (no code) on sys.path."""
    info = path / f"flash_attn_4-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: flash-attn-4\nVersion: {version}\n")
    sys.path.insert(0, str(path))


def test_another_version_is_not_used_and_says_which_to_install(tmp_path, monkeypatch, fresh_interface):
    monkeypatch.setattr(sys, "path", list(sys.path))
    _install_metadata(tmp_path, "4.0.0b1")
    with pytest.warns(UserWarning, match=r"flash-attn-4 4\.0\.0b1 is installed.*flash-attn-4==4\.0\.0b36"):
        assert not fa4.available()


def test_the_pinned_version_that_does_not_import_falls_back_and_says_why(tmp_path, monkeypatch, fresh_interface):
    monkeypatch.setattr(sys, "path", list(sys.path))
    _install_metadata(tmp_path, fa4.PINNED_VERSION)
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # what an import of a broken install raises: ImportError
    with pytest.warns(UserWarning, match="flash-attn-4 does not import"):
        assert not fa4.available()


def test_cpu_tensors_stay_on_sdpa():
    q = torch.randn(1, 2, 8, 64, dtype=torch.bfloat16)
    k = torch.randn(1, 2, 2048, 64, dtype=torch.bfloat16)
    assert not fa4.serves(q, k, None)
    assert torch.equal(attention(q, k, k), torch.nn.functional.scaled_dot_product_attention(q, k, k))


def test_its_forward_is_an_op_that_selective_recompute_keeps():
    from megatron_rcm.models.dit import _ATTENTION_OPS
    assert torch.ops.megatron_rcm.fa4_forward.default in _ATTENTION_OPS


def test_the_benchmark_refuses_a_wrong_switch_in_one_line():
    tool = Path(__file__).resolve().parents[2] / "tools" / "bench_plain_attention.py"
    run = subprocess.run([sys.executable, str(tool), "--cpu-smoke"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, MEGATRON_RCM_FA4="off"))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "bench_plain_attention: error: MEGATRON_RCM_FA4 must be 0 (plain attention on SDPA) or 1 "
        "(FlashAttention-4 where it serves), got 'off' (see --help)"]
    assert run.stdout == ""


def test_no_warm_up_where_it_would_not_serve():
    assert fa4.warm_up(torch.bfloat16, 128, torch.device("cpu")) is None


def test_torch_compile_does_not_trace_the_package_lookup():
    compiled = torch.compile(lambda x: x + fa4.available(), fullgraph=True)
    assert torch.equal(compiled(torch.ones(2)), torch.ones(2) + fa4.available())


def test_the_warm_up_stamp_names_what_the_cached_kernels_depend_on(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", str(tmp_path))
    stamp = fa4._stamp(torch.bfloat16, 128, torch.device("cuda", 0))
    assert stamp.parent == tmp_path and fa4.PINNED_VERSION in stamp.name and "sm90" in stamp.name
    others = {fa4._stamp(torch.float16, 128, None), fa4._stamp(torch.bfloat16, 64, None)}
    assert stamp not in others and len(others) == 2
