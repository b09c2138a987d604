"""tools/prepare_data.py on a tiny real Cosmos-Predict2 text-to-image folder and real png/jpg files:
the shards hold [C, 1, h, w] latents of diffusers' VAE and the embeddings of the pipeline's
encode_prompt, and a tiny Cosmos rCM run (examples/pretrain_rcm.py --model) trains on them."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_rcm.data.latent_shards import LatentShardDataset
from megatron_rcm.data.videos import read_video
from megatron_rcm.encoders import COSMOS_NEGATIVE_PROMPT
from tests.cosmos_pipeline import PRESET, load_pipeline, tiny_cosmos_pipeline
from tests.training.tiny_setup import TINY_CONFIG, read_jsonl, torchrun

from .video_files import prepare_tool, random_frames

HEIGHT, WIDTH = 32, 32
CAPTIONS = {"a_kite.png": "a child flies a yellow kite on the beach",
            "b_reef.jpg": "colourful fish swim through a coral reef",
            "c_park.png": "  an old man reads a newspaper in a quiet park  "}


@pytest.fixture(scope="module")
def pipeline():
    return tiny_cosmos_pipeline()


@pytest.fixture(scope="module")
def shards(pipeline, tmp_path_factory):
    """Three captioned images (RGB png, jpg, png with alpha) and the shards prepared from them."""
    images = tmp_path_factory.mktemp("images")
    Image.fromarray(random_frames(1, 40, 48, seed=1)[0]).save(images / "a_kite.png")
    Image.fromarray(random_frames(1, 24, 24, seed=2)[0]).save(images / "b_reef.jpg", quality=95)
    rgba = np.concatenate([random_frames(1, 32, 32, seed=3)[0], np.full((32, 32, 1), 200, np.uint8)], -1)
    Image.fromarray(rgba).save(images / "c_park.png")
    for name, caption in CAPTIONS.items():
        (images / name).with_suffix(".txt").write_text(caption)
    out = tmp_path_factory.mktemp("shards") / "data"
    argv = ["--pipeline", str(pipeline), "--images", str(images), "--output", str(out), "--height", str(HEIGHT),
            "--width", str(WIDTH), "--samples-per-shard", "2", "--no-progress"]
    assert prepare_tool().main(argv) == 0
    return images, out


def test_image_shards_hold_diffusers_latents_and_the_pipelines_embeddings(pipeline, shards):
    images, out = shards
    data = LatentShardDataset(out)
    assert len(data) == 3
    pipe = load_pipeline(pipeline)
    config = pipe.vae.config
    mean = torch.tensor(config.latents_mean, dtype=torch.float64).view(-1, 1, 1, 1)
    std = torch.tensor(config.latents_std, dtype=torch.float64).view(-1, 1, 1, 1)
    captions = [c.strip() for c in CAPTIONS.values()]
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(captions, negative_prompt=[COSMOS_NEGATIVE_PROMPT] * 3,
                                              max_sequence_length=512)
        for i, name in enumerate(CAPTIONS):
            image = read_video(images / name, 1, HEIGHT, WIDTH)
            assert image.shape == (3, 1, HEIGHT, WIDTH)
            mode = pipe.vae.encode(image.unsqueeze(0)).latent_dist.mode()[0]
            sample = data[i]
            assert sample["latent"].shape == (4, 1, 4, 4) and sample["embed"].shape == (512, 24)
            torch.testing.assert_close(sample["latent"].double(), (mode.double() - mean) / std, rtol=0, atol=1e-6)
            torch.testing.assert_close(sample["embed"], embeds[i], rtol=0, atol=1e-6)
            assert sample["prompt"] == captions[i]
    torch.testing.assert_close(torch.load(out / "negative_prompt.pt"), negative[0], rtol=0, atol=1e-6)
    # an image at the size is its pixels (RGB of the RGBA file), not a resampling
    pixels = torch.from_numpy(np.array(Image.open(images / "c_park.png").convert("RGB")))
    assert torch.equal(read_video(images / "c_park.png", 1, 32, 32)[:, 0],
                       (pixels.float() / 255 * 2 - 1).permute(2, 0, 1))


def test_a_cosmos_rcm_run_trains_on_the_image_shards(pipeline, shards, tmp_path):
    _, out = shards
    log = tmp_path / "log.jsonl"
    torchrun(1, ["--config", str(TINY_CONFIG), "--teacher", str(pipeline / "transformer"), "--data-path", str(out),
                 "--negative-prompt-embedding", str(out / "negative_prompt.pt"), "--model", PRESET,
                 "--train-iters", "2", "--log-jsonl", str(log)])
    records = read_jsonl(log)
    assert [r["iteration"] for r in records] == [1, 2]
    losses = [v for r in records for k, v in r.items() if k.startswith("loss/")]
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses)


def test_cosmos_teacher_samples_equal_the_guided_sampler_at_the_pipelines_defaults(pipeline, tmp_path):
    from megatron_rcm import load_model
    from megatron_rcm.diffusion import ClassifierFreeGuidance, sample_rf_euler
    from megatron_rcm.parallel import parallel_context

    prompts = list(CAPTIONS.values())[:2]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "teacher"
    assert prepare_tool().main(["--pipeline", str(pipeline), "--prompts", str(tmp_path / "prompts.txt"),
                                "--teacher", str(pipeline), "--output", str(out), "--height", str(HEIGHT), "--width",
                                str(WIDTH), "--steps", "2", "--sampler", "euler", "--seed", "5", "--no-progress"]) == 0
    data = LatentShardDataset(out)
    with torch.no_grad():
        embeds, negative = load_pipeline(pipeline).encode_prompt(prompts, negative_prompt=[COSMOS_NEGATIVE_PROMPT] * 2,
                                                                 max_sequence_length=512)
    with parallel_context(), torch.no_grad():
        teacher = ClassifierFreeGuidance(load_model(pipeline), negative[0], 7.0)  # the pipeline's guidance
        for i in range(2):
            noise = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(5 + i))
            expected = sample_rf_euler(teacher, noise, embeds[i:i + 1], 2, 3.0)[0]
            torch.testing.assert_close(data[i]["latent"], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--num-frames", "5"], "--num-frames 5: a Cosmos2TextToImagePipeline folder's model makes images"),
    ([], "--height --width needed to prepare shards"),
])
def test_image_pipeline_errors(pipeline, tmp_path, capsys, extra, message):
    argv = ["--pipeline", str(pipeline), "--images", str(tmp_path), "--output", str(tmp_path / "o"), *extra]
    try:
        code = prepare_tool().main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 1 and message in capsys.readouterr().err
