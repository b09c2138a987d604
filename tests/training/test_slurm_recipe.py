"""examples/slurm/pretrain_rcm.sbatch: the training command it builds for the two Wan recipes is
valid at the job sizes its header gives (flags after the config pass through and override it)."""

import json
import os
import shlex
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from megatron_rcm.models.wan import diffusers_config, wan_config
from megatron_rcm.training.arguments import parse_args, validate

from .tiny_setup import ROOT, SCRIPT

SBATCH = ROOT / "examples" / "slurm" / "pretrain_rcm.sbatch"


def _dry_run(config, extra, env):
    result = subprocess.run(["bash", str(SBATCH), str(config), *extra], env={**os.environ, **env, "RCM_DRY_RUN": "1"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


@pytest.mark.parametrize("recipe, preset, extra, world, tp", [
    ("wan1.3b_rcm.yaml", "wan2.1-t2v-1.3b", ["--tensor-model-parallel-size", "2", "--sequence-parallel"], 8, 2),
    ("wan14b_rcm.yaml", "wan2.1-t2v-14b", [], 8, 8),
    ("wan14b_rcm.yaml", "wan2.1-t2v-14b", ["--tensor-model-parallel-size", "4", "--no-offload-ema",
                                           "--no-offload-teacher"], 32, 4),
])
def test_recipe_command_is_valid_at_the_documented_size(tmp_path, recipe, preset, extra, world, tp):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps(diffusers_config(wan_config(preset))))
    save_file({}, teacher / "diffusion_pytorch_model.safetensors")  # the trainer reads the weights' header
    torch.save(torch.randn(3, wan_config(preset).text_dim), tmp_path / "negative.pt")
    (tmp_path / "data").mkdir()
    env = dict(TEACHER=str(teacher), DATA=str(tmp_path / "data"), NEGATIVE=str(tmp_path / "negative.pt"),
               SAVE=str(tmp_path / "save"), REPO=str(ROOT))
    # --no-bf16: the recipes train in bf16, which validate() refuses without CUDA
    command = _dry_run(ROOT / "examples" / "configs" / recipe, [*extra, "--no-bf16"], env)
    assert command[:2] == ["python", str(SCRIPT)]
    config = validate(parse_args(command[2:]), world_size=world)
    assert config.parallel.tensor_model_parallel_size == tp and config.parallel.sequence_parallel
    # the 14B recipe's one-node layout keeps the EMA and the teacher in host memory
    offloaded = recipe == "wan14b_rcm.yaml" and world == 8
    assert config.networks.offload_ema == config.networks.offload_teacher == offloaded
    assert config.checkpoint.save == env["SAVE"] and config.teacher == env["TEACHER"]
    assert not (tmp_path / "save").exists()  # a dry run creates nothing


def test_missing_paths_are_named(tmp_path):
    result = subprocess.run(["bash", str(SBATCH), str(ROOT / "examples/configs/wan1.3b_rcm.yaml")],
                            env={k: v for k, v in os.environ.items() if k not in ("TEACHER", "DATA", "NEGATIVE", "SAVE")},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "set TEACHER" in result.stderr
