"""examples/generate.py on 2 gloo ranks in float64: TP=2, CP=2 (the model sharded, every rank the
same prompt and noise) and DP=2 (one prompt per rank) write the latents of one rank."""

from pathlib import Path

import pytest
import torch

from megatron_rcm.testing import run_distributed
from tests.wan_pipeline import tiny_wan_pipeline

from .common import SIZE, generate

PROMPTS = ["a red fox runs across a snowy field at dawn", "waves crash against black rocks"]


def _generate(pipeline, prompts_file, output, *parallel):
    assert generate("--pipeline", pipeline, "--checkpoint", Path(pipeline) / "transformer", "--prompts", prompts_file,
                    *SIZE, "--steps", "3", "--seed", "11", "--dtype", "float64", "--output", output,
                    "--save-latents", *parallel) == 0


def _latents(folder):
    return {p.name: torch.load(p, weights_only=True) for p in sorted(Path(folder).glob("*.pt"))}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    _generate(tiny_wan_pipeline(), folder / "prompts.txt", folder / "out")
    return folder, _latents(folder / "out")


@pytest.mark.parametrize("parallel", [("--tensor-model-parallel-size", "2"), ("--context-parallel-size", "2"), ()],
                         ids=["tp2", "cp2", "dp2"])
def test_two_ranks_equal_one(parallel, single, tmp_path):
    folder, expected = single
    run_distributed(_generate, world_size=2, args=(tiny_wan_pipeline(), folder / "prompts.txt", tmp_path / "out",
                                                   *parallel))
    latents = _latents(tmp_path / "out")
    assert latents.keys() == expected.keys() and len(latents) == 2
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [".json"] * 2 + [".mp4"] * 2 + [".pt"] * 2
    for name, tensor in latents.items():
        assert tensor.dtype == torch.float64
        torch.testing.assert_close(tensor, expected[name], rtol=1e-10, atol=1e-10)
