"""examples/generate.py on 2 gloo ranks in float64: TP=2, CP=2 (the model sharded, every rank the
same prompt and noise) and DP=2 (one prompt per rank) write the latents of one rank, for the Wan2.1
video and the Cosmos-Predict2 image pipelines."""

from pathlib import Path

import pytest
import torch

from megatron_rcm.testing import run_distributed
from tests.cosmos_pipeline import tiny_cosmos_pipeline
from tests.wan_pipeline import tiny_wan_pipeline

from .common import SIZE, generate

PROMPTS = ["a red fox runs across a snowy field at dawn", "waves crash against black rocks"]
PIPELINES = {"wan": (tiny_wan_pipeline, SIZE, ".mp4"), "cosmos": (tiny_cosmos_pipeline, ["--height", "32", "--width",
                                                                                      "48"], ".png")}
PARALLEL = {"tp2": ("--tensor-model-parallel-size", "2"), "cp2": ("--context-parallel-size", "2"), "dp2": ()}
CASES = [("wan", "tp2"), ("wan", "cp2"), ("wan", "dp2"), ("cosmos", "tp2"), ("cosmos", "cp2")]


def _generate(pipeline, size, prompts_file, output, *parallel):
    assert generate("--pipeline", pipeline, "--checkpoint", Path(pipeline) / "transformer", "--prompts", prompts_file,
                    *size, "--steps", "3", "--seed", "11", "--dtype", "float64", "--output", output,
                    "--save-latents", *parallel) == 0


def _latents(folder):
    return {p.name: torch.load(p, weights_only=True) for p in sorted(Path(folder).glob("*.pt"))}


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def single(prompts_file, tmp_path_factory):
    """family -> the latents of one rank (computed once per family)."""
    cache = {}

    def latents(family):
        if family not in cache:
            folder = tmp_path_factory.mktemp(f"single-{family}")
            _generate(PIPELINES[family][0](), PIPELINES[family][1], prompts_file, folder / "out")
            cache[family] = _latents(folder / "out")
        return cache[family]

    return latents


@pytest.mark.parametrize("family, layout", CASES, ids=[f"{f}-{p}" for f, p in CASES])
def test_two_ranks_equal_one(family, layout, prompts_file, single, tmp_path):
    expected = single(family)
    build, size, media = PIPELINES[family]
    run_distributed(_generate, world_size=2, args=(build(), size, prompts_file, tmp_path / "out", *PARALLEL[layout]))
    latents = _latents(tmp_path / "out")
    assert latents.keys() == expected.keys() and len(latents) == 2
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == sorted([".json", media, ".pt"] * 2)
    for name, tensor in latents.items():
        assert tensor.dtype == torch.float64
        torch.testing.assert_close(tensor, expected[name], rtol=1e-10, atol=1e-10)
