"""A diffusers CosmosTransformer3DModel folder through tools/convert_checkpoint.py (--from diffusers --to
megatron, TP-chunked, --verify) loads with load_model on 1 (--verify) and 2 gloo ranks and equals
diffusers in float64; megatron -> diffusers gives back the same bits."""

import subprocess
import sys

import torch
from safetensors.torch import load_file

from megatron_rcm import load_model
from megatron_rcm.convert.api import convert_checkpoint
from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.testing import run_distributed

from .cosmos_oracle import config, diffusers_model, inputs, oracle, relative_error

TOL = 1e-10


def _load_and_compare(path, tp, data, expected):
    with parallel_context(ParallelConfig(tensor_model_parallel_size=tp)), torch.no_grad():
        model = load_model(path, params_dtype=torch.float64)
        out_p, out_t = model.jvp(data["x"], data["t"], data["text"], data["x_t"], data["t_t"])
        return type(model).__name__, relative_error(out_p, expected["out"]), relative_error(out_t, expected["out_t"])


def test_diffusers_to_megatron_and_back(tmp_path):
    cfg = config("cosmos-tiny-a")
    reference = diffusers_model(cfg, seed=1)
    reference.save_pretrained(tmp_path / "diffusers")
    data = inputs(cfg, 2, (1, 4, 2), 3, seed=2)
    expected = oracle(reference, data)

    result = subprocess.run(
        [sys.executable, "tools/convert_checkpoint.py", "--from", "diffusers", "--to", "megatron", "--input",
         str(tmp_path / "diffusers"), "--output", str(tmp_path / "megatron"), "--tensor-parallel-size", "2",
         "--verify", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    error = float(result.stdout.split("max relative difference of the outputs")[1])
    assert error < TOL

    # --verify loaded it at TP=1; at TP=2 each rank loads its slices
    for name, forward, jvp in run_distributed(_load_and_compare, world_size=2,
                                              args=(str(tmp_path / "megatron"), 2, data, expected)):
        assert name == "CosmosModel" and forward < TOL and jvp < TOL, (forward, jvp)

    convert_checkpoint("megatron", "diffusers", tmp_path / "megatron", tmp_path / "back", progress=False)
    before, after = load_file(tmp_path / "diffusers" / "diffusion_pytorch_model.safetensors"), \
        load_file(tmp_path / "back" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
