"""The kernels load only as megatron_rcm.kernels, even with the repository root on sys.path.

transformers probes for the Hugging Face ``kernels`` package by importing ``kernels``; from the
repository root that finds this project's ``kernels/`` folder. Loading flash_jvp under that
name too registered the custom op a second time and freed the first registration, which then
crashed (use after free) the next flash_attention_jvp call of megatron_rcm.kernels.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import importlib, sys
import torch
from megatron_rcm.kernels import flash_attention_jvp
from transformers.utils.import_utils import is_kernels_available

assert not is_kernels_available()  # the probe imported our folder as ``kernels`` and found nothing
assert "kernels" in sys.modules and not hasattr(sys.modules["kernels"], "flash_attention_jvp")
try:
    importlib.import_module("kernels.flash_jvp")
except ImportError as e:
    assert "megatron_rcm.kernels.flash_jvp" in str(e), e
else:
    raise AssertionError("kernels.flash_jvp imported under its bare name")
g = torch.Generator().manual_seed(3)
q, k, v, qt, kt, vt = (torch.randn(1, 2, 5, 16, generator=g) for _ in range(6))
out = flash_attention_jvp(q, k, v, qt, kt, vt)
assert torch.allclose(out.out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
print("ok")
"""


def test_bare_kernels_name_is_empty_and_the_op_survives_the_probe():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
