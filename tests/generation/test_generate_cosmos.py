"""examples/generate.py on a tiny real Cosmos-Predict2 text-to-image pipeline: a PNG whose pixels
are diffusers' own decode and postprocessing of the latents, latents equal to the samplers called
directly with the documented noise, and the family's errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_rcm import load_model
from megatron_rcm.diffusion import ClassifierFreeGuidance, TrigFlowDenoiser, sample_few_step, sample_rf_euler
from megatron_rcm.encoders import COSMOS_NEGATIVE_PROMPT
from megatron_rcm.parallel import parallel_context
from tests.cosmos_pipeline import load_pipeline, pipeline_decode, tiny_cosmos_pipeline
from tests.wan_pipeline import tiny_wan_pipeline

from .common import embed, generate, generate_one, saved_latents

PROMPT = "a child flies a yellow kite on the beach"
SIZE = ["--height", "32", "--width", "48"]  # --num-frames: the image pipeline's 1
LATENT_SHAPE = (1, 4, 1, 4, 6)


@pytest.fixture(scope="module")
def pipeline():
    return tiny_cosmos_pipeline()


def _run(pipeline, output, *extra):
    generate_one(pipeline, PROMPT, SIZE, output, *extra)
    return {p.suffix: p for p in output.iterdir()}


def _reference(pipeline, sampler):
    with parallel_context():
        model = load_model(pipeline / "transformer").eval()
        assert type(model).__name__ == "CosmosModel"
        return sampler(model, embed(pipeline, [PROMPT]))


def test_student_writes_the_png_of_diffusers_decode(pipeline, tmp_path):
    files = _run(pipeline, tmp_path / "out", "--steps", "2", "--seed", "4")
    assert sorted(files) == [".json", ".png", ".pt"]
    assert files[".png"].name == "0000_a-child-flies-a-yellow-kite-on-the-beach.png"
    record = json.loads(files[".json"].read_text())
    assert record["mode"] == "student" and record["num_frames"] == 1 and "fps" not in record
    assert record["pipeline_class"] == "Cosmos2TextToImagePipeline" and record["latent_shape"] == list(LATENT_SHAPE)

    def few_step(model, text):
        generator = torch.Generator().manual_seed(4)
        noise = torch.randn(LATENT_SHAPE, generator=generator)
        return sample_few_step(TrigFlowDenoiser(model), noise, text, 2, generator=generator)

    latents = saved_latents(tmp_path / "out")
    assert latents.std() > 0.1
    torch.testing.assert_close(latents, _reference(pipeline, few_step), rtol=0, atol=0)

    pipe = load_pipeline(pipeline)  # diffusers' VAE decode and the pipeline's postprocessing to PIL
    expected = pipe.video_processor.postprocess_video(pipeline_decode(pipe, latents), output_type="pil")[0][0]
    png = np.asarray(Image.open(files[".png"]))
    assert png.shape == (32, 48, 3) and png.dtype == np.uint8 and png.std() > 5
    assert np.array_equal(png, np.asarray(expected))


def test_teacher_mode_is_the_guided_rf_sampler_with_the_pipelines_negative_prompt(pipeline, tmp_path):
    files = _run(pipeline, tmp_path / "out", "--teacher-steps", "2", "--sampler", "euler", "--seed", "6")
    record = json.loads(files[".json"].read_text())
    assert record["guidance_scale"] == 7.0 and record["negative_prompt"] == COSMOS_NEGATIVE_PROMPT

    def teacher(model, text):
        negative = embed(pipeline, [COSMOS_NEGATIVE_PROMPT])[0]
        noise = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(6))
        return sample_rf_euler(ClassifierFreeGuidance(model, negative, 7.0), noise, text, 2, shift=3.0)

    torch.testing.assert_close(saved_latents(tmp_path / "out"), _reference(pipeline, teacher), rtol=0, atol=0)


@pytest.mark.parametrize("extra, message", [
    (["--num-frames", "5"], "--num-frames 5: a Cosmos2TextToImagePipeline folder makes images; pass --num-frames 1"),
    (["--checkpoint", "{wan}/transformer"], "holds a wan model (WanTransformer3DModel), but --pipeline"),
], ids=["frames", "family"])
def test_bad_input_is_one_line_and_exit_1(pipeline, tmp_path, capsys, extra, message):
    extra = [e.format(wan=tiny_wan_pipeline()) for e in extra]
    capsys.readouterr()
    assert generate("--pipeline", pipeline, "--checkpoint", pipeline / "transformer", "--prompt", PROMPT, *SIZE,
                    "--output", tmp_path / "out", *extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("generate: error: ") and message in err[-1], err
    assert not (tmp_path / "out").exists()
