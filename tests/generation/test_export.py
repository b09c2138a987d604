"""tools/convert_checkpoint.py --to diffusers-pipeline: the folder loads with WanPipeline.from_pretrained
and the model card's call reproduces examples/generate.py's latents (float32, 1, 2 and 4 steps)."""

import json
import os

import pytest
import torch

from megatron_rcm import load_model
from megatron_rcm.loading import SAMPLER_KEY, checkpoint_models
from megatron_rcm.parallel import parallel_context
from tests.wan_pipeline import TINY_TRANSFORMER, TINY_UMT5, TINY_VAE, tiny_wan_pipeline

from .common import SIZE, exit_status, generate, saved_latents, script

PROMPT = "two cats sleep on a warm windowsill"
COPIED = ("vae", "text_encoder", "tokenizer")
RECORDED = {"sigma_max": 40.0, "mid_times": [1.45, 1.2, 0.9]}  # not the defaults: both tools must read them


def _convert(*argv) -> int:
    return exit_status("tools/convert_checkpoint.py", *argv)


def _student(folder):
    """A student unlike the base transformer, as a training run exports it: a Megatron checkpoint
    that records its model and the sampler settings it was trained for."""
    from diffusers import WanTransformer3DModel
    from megatron.core import dist_checkpointing

    torch.manual_seed(4)
    model = WanTransformer3DModel(**TINY_TRANSFORMER, in_channels=TINY_VAE["z_dim"], out_channels=TINY_VAE["z_dim"],
                                  text_dim=TINY_UMT5["d_model"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder / "student_diffusers")
    with parallel_context():
        megatron = load_model(folder / "student_diffusers")
        state = megatron.sharded_state_dict(prefix="model.")
        state.update(checkpoint_models({"model.": megatron.config}), **{SAMPLER_KEY: RECORDED})
        (folder / "student").mkdir()
        dist_checkpointing.save(state, str(folder / "student"))
    return folder / "student"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    student = _student(folder)
    assert _convert("--from", "megatron", "--to", "diffusers-pipeline", "--pipeline", tiny_wan_pipeline(),
                    "--input", student, "--output", folder / "pipeline") == 0
    return student, folder / "pipeline"


def test_folder_loads_and_shares_the_base_components(exported):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    _, folder = exported
    base = tiny_wan_pipeline()
    pipe = WanPipeline.from_pretrained(folder)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.stochastic_sampling
    for name in COPIED:
        for path in (base / name).iterdir():
            assert os.path.samefile(path, folder / name / path.name), path
    assert json.loads((base / "model_index.json").read_text())["scheduler"][1] == "UniPCMultistepScheduler"
    record = json.loads((folder / "rcm_sampler.json").read_text())
    assert sorted(record["schedules"]) == ["1", "2", "3", "4"]
    assert {k: record[k] for k in RECORDED} == RECORDED
    assert "rcm_generate(pipe" in (folder / "README.md").read_text()


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_card_call_reproduces_generate(steps, exported, tmp_path):
    from diffusers import WanPipeline

    student, folder = exported
    seed = 20 + steps
    assert generate("--pipeline", tiny_wan_pipeline(), "--checkpoint", student, "--prompt", PROMPT, *SIZE,
                    "--steps", steps, "--seed", seed, "--output", tmp_path / "out", "--save-latents") == 0
    expected = saved_latents(tmp_path / "out")[0]
    sidecar = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert {k: sidecar[k] for k in RECORDED} == RECORDED

    pipe = WanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    rcm_generate = script("tools/compare_pipeline_call.py").card_call(folder)  # the model card's code
    latents = rcm_generate(pipe, PROMPT, steps=steps, seed=seed, height=32, width=32, num_frames=5,
                           output_type="latent")
    assert latents.shape == expected.shape and expected.std() > 0.1
    # float32: two implementations of the transformer and of the step arithmetic, equal to rounding
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-5)


def test_errors_are_one_line(exported, tmp_path, capsys):
    from diffusers import WanTransformer3DModel

    student, folder = exported
    base_args = ["--from", "megatron", "--to", "diffusers-pipeline", "--input", student]
    (tmp_path / "no_vae").mkdir()
    WanTransformer3DModel(**TINY_TRANSFORMER, in_channels=TINY_VAE["z_dim"], out_channels=TINY_VAE["z_dim"],
                          text_dim=TINY_UMT5["d_model"] + 8).save_pretrained(tmp_path / "other_text_dim")
    other = ["--from", "diffusers", "--to", "diffusers-pipeline", "--input", tmp_path / "other_text_dim"]
    cases = [([*other, "--pipeline", tiny_wan_pipeline(), "--output", tmp_path / "c"],
              "the student's text_dim is 32 but the base pipeline's text encoder gives 24"),
             ([*base_args, "--output", tmp_path / "a"], "needs --pipeline BASE"),
             ([*base_args, "--pipeline", tmp_path / "no_vae", "--output", tmp_path / "b"], "has no vae/ folder"),
             ([*base_args, "--pipeline", tiny_wan_pipeline(), "--output", folder], "exists")]
    for argv, message in cases:
        capsys.readouterr()
        assert _convert(*argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("convert_checkpoint: error:") and message in err[-1], err
    assert not any((tmp_path / name).exists() for name in "abc") and not list(tmp_path.glob(".*.tmp-*"))
    assert _convert(*base_args, "--pipeline", tiny_wan_pipeline(), "--output", folder, "--force") == 0


def test_compare_tool_reports_the_card_call_and_the_stock_gaps(exported, tmp_path, capsys):
    student, folder = exported
    assert generate("--pipeline", tiny_wan_pipeline(), "--checkpoint", student, "--prompt", PROMPT, *SIZE,
                    "--steps", 2, "--seed", 9, "--output", tmp_path / "out", "--save-latents") == 0
    capsys.readouterr()
    script("tools/compare_pipeline_call.py").main(["--pipeline", str(folder), "--videos", str(tmp_path / "out"),
                                                   "--stock-variants"])
    rows = [line.split("|")[3:6] for line in capsys.readouterr().out.splitlines() if "| 2 |" in line]
    ratio = {call.strip(): float(relative) for call, _, relative in rows}
    assert ratio["model card"] < 1e-5
    # the stock pipeline without the bound sigmas or generator is a different sampler
    assert ratio["without sigmas"] > 0.1 and ratio["without generator"] > 0.1
