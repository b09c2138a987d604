"""The kernels live inside the package (megatron_rcm.kernels), so the repository root on sys.path
hides no other ``kernels``: the Hugging Face kernel hub's package has that name, and transformers
(5.25 and later require it) imports names from it when ``PreTrainedModel`` loads. When this
project's kernels were a top-level folder, that import found the folder and failed."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import importlib.util
from pathlib import Path
import torch
from transformers import PreTrainedModel  # transformers' probe for the kernel hub runs here
from megatron_rcm.kernels import flash_attention_jvp

spec = importlib.util.find_spec("kernels")
assert spec is None or Path(spec.origin).resolve().parents[1] != Path.cwd().resolve(), spec.origin
g = torch.Generator().manual_seed(3)
q, k, v, qt, kt, vt = (torch.randn(1, 2, 5, 16, generator=g) for _ in range(6))
out = flash_attention_jvp(q, k, v, qt, kt, vt)
assert torch.allclose(out.out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
print("ok")
"""


def test_the_repository_root_hides_no_kernels_package_and_transformers_loads():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
