"""SIGINT or SIGTERM while tools/convert_checkpoint.py writes: exit 130 with one line, no output
where the final one belongs, no temporary folder left, the input untouched."""

import hashlib
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from megatron_rcm.convert.wan_native import expected_diffusers_shapes
from megatron_rcm.models.wan import diffusers_config, wan_config

from ..training.tiny_setup import ROOT

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def large_input(tmp_path_factory):
    """A diffusers folder of about 200 MB: long enough to convert that a signal lands mid-write."""
    folder = tmp_path_factory.mktemp("large")
    config = diffusers_config(wan_config("tiny-a", num_layers=12, num_attention_heads=8, kv_channels=64,
                                         hidden_size=512, ffn_hidden_size=2048))
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: torch.ones(shape) for k, shape in expected_diffusers_shapes(config).items()},
              folder / "diffusion_pytorch_model.safetensors")
    return folder


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_conversion_leaves_nothing(large_input, tmp_path, sig):
    before = _digest(large_input)
    output = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"), "--from", "diffusers",
                             "--to", "megatron", "--input", str(large_input), "--output", str(output),
                             "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob(".out.tmp-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130 and lines == ["convert_checkpoint: error: interrupted"], (proc.returncode, err)
    assert list(tmp_path.iterdir()) == [] and _digest(large_input) == before
