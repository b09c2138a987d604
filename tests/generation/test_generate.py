"""examples/generate.py on a tiny real Wan2.1 pipeline: the mp4, the sidecar, latents equal to the
samplers called directly with the documented noise, and the error catalogue."""

import json
import shutil

import pytest
import torch

from megatron_rcm import load_model
from megatron_rcm.diffusion import ClassifierFreeGuidance, TrigFlowDenoiser, sample_few_step, sample_rf_unipc
from megatron_rcm.atomic_output import new_dir_mode
from megatron_rcm.parallel import parallel_context
from tests.wan_pipeline import tiny_wan_pipeline

# the mp4 writer is the "data" extra's (CI installs it; the GPU machines lack it and run no CPU test)
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="install the 'data' extra to write mp4s")

from .common import LATENT_SHAPE, SIZE, embed, generate, generate_one, saved_latents

PROMPT = "a red fox runs across a snowy field at dawn"


@pytest.fixture(scope="module")
def pipeline():
    return tiny_wan_pipeline()


def _run(pipeline, output, *extra):
    generate_one(pipeline, PROMPT, SIZE, output, *extra)


def _reference(pipeline, sampler):
    """``sampler(model, text)`` with the tiny transformer loaded through load_model, in float32."""
    with parallel_context():
        model = load_model(pipeline / "transformer").eval()
        return sampler(model, embed(pipeline, [PROMPT]))


def test_student_writes_mp4_sidecar_and_the_sampler_latents(pipeline, tmp_path):
    _run(pipeline, tmp_path / "out", "--steps", "2", "--seed", "5")
    assert (tmp_path / "out").stat().st_mode & 0o777 == new_dir_mode()  # as mkdir would make it, not 0700
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"0000_a-red-fox-runs-across-a-snowy-field-at-d{s}" for s in (".json", ".mp4", ".pt")]

    reader = imageio_ffmpeg.read_frames(str(tmp_path / "out" / names[1]))
    meta = next(reader)
    frames = list(reader)
    assert meta["size"] == (32, 32) and meta["fps"] == 16 and len(frames) == 5

    record = json.loads((tmp_path / "out" / names[0]).read_text())
    assert record["mode"] == "student" and record["seed"] == 5 and record["steps"] == 2
    assert record["latent_shape"] == list(LATENT_SHAPE)

    def few_step(model, text):
        generator = torch.Generator().manual_seed(5)
        noise = torch.randn(LATENT_SHAPE, generator=generator)  # the first draw, then the re-noising draws
        return sample_few_step(TrigFlowDenoiser(model), noise, text, 2, generator=generator)

    expected = _reference(pipeline, few_step)
    latents = saved_latents(tmp_path / "out")
    assert latents.dtype == torch.float32 and latents.std() > 0.1
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)


def test_teacher_mode_is_the_guided_unipc_sampler(pipeline, tmp_path):
    _run(pipeline, tmp_path / "out", "--teacher-steps", "3", "--guidance-scale", "2.5", "--negative-prompt",
         "blurry, static", "--shift", "2", "--seed", "3")

    def teacher(model, text):
        negative = embed(pipeline, ["blurry, static"])[0]
        noise = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(3))
        return sample_rf_unipc(ClassifierFreeGuidance(model, negative, 2.5), noise, text, 3, shift=2.0)

    expected = _reference(pipeline, teacher)
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert record["mode"] == "teacher" and record["guidance_scale"] == 2.5 and record["teacher_steps"] == 3
    torch.testing.assert_close(saved_latents(tmp_path / "out"), expected, rtol=0, atol=0)


def _without_tokenizer(pipeline, tmp_path):
    folder = tmp_path / "no_tokenizer"
    shutil.copytree(pipeline, folder, ignore=shutil.ignore_patterns("tokenizer"))
    return folder


ERRORS = {
    "steps 0": (["--steps", "0"], "--steps must lie in 1..4"),
    "steps 5": (["--steps", "5"], "--steps must lie in 1..4"),
    "height off the VAE stride": (["--height", "36"], "--height 36 is not a positive multiple of 8"),
    "width off VAE x patch": (["--width", "24"], "--width 24 is not a positive multiple of 16 (VAE stride 8 x patch"),
    "frame count": (["--num-frames", "6"], "--num-frames 6 must be 1 + a multiple of the VAE's temporal stride 4"),
    "not a transformer": (["--checkpoint", "{pipeline}/vae"], "is not a transformer checkpoint"),
    "missing checkpoint": (["--checkpoint", "{tmp}/nothing"], "does not exist"),
    "pipeline without tokenizer": (["--pipeline", "{no_tokenizer}"], "has no tokenizer/ folder"),
    "existing output": (["--output", "{tmp}"], "exists; choose another folder or pass --force"),
    "empty prompts file": (["--prompts", "{empty}"], "no prompt given"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_input_is_one_line_and_exit_1(name, pipeline, tmp_path, capsys):
    extra, message = ERRORS[name]
    (tmp_path / "empty.txt").write_text("\n \n")
    values = dict(pipeline=pipeline, tmp=tmp_path, empty=tmp_path / "empty.txt",
                  no_tokenizer=_without_tokenizer(pipeline, tmp_path) if "tokenizer" in name else None)
    argv = ["--pipeline", pipeline, "--checkpoint", pipeline / "transformer", "--output", tmp_path / "out", *SIZE]
    extra = [e.format(**values) for e in extra]
    if "--prompts" not in extra:
        argv += ["--prompt", PROMPT]
    capsys.readouterr()
    assert generate(*argv, *extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("generate: error: ") and message in err[-1], err
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_debug_shows_the_traceback(pipeline, tmp_path, capsys):
    argv = ["--pipeline", pipeline, "--checkpoint", pipeline / "vae", "--prompt", PROMPT, "--output", tmp_path / "o"]
    assert generate(*argv, *SIZE, "--debug") == 1
    assert "Traceback" in capsys.readouterr().err


def test_misspelt_flag_is_one_line_and_exit_2(pipeline, tmp_path, capsys):
    argv = ["--pipeline", pipeline, "--checkpoint", pipeline / "transformer", "--prompt", PROMPT, "--output", tmp_path]
    assert generate(*argv, "--step", "2") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unrecognized arguments: --step 2" in line and line.endswith("(see --help)")
