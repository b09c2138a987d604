"""tools/prepare_data.py on a tiny real Wan2.1 diffusers folder and real video files: the shards
hold what diffusers' VAE and WanPipeline.encode_prompt give, and the teacher mode what the
teacher's sampler gives."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_rcm.data.latent_shards import LatentShardDataset
from megatron_rcm.data.videos import read_video, resize_and_crop
from megatron_rcm.encoders import WAN_NEGATIVE_PROMPT

from .video_files import captioned_video, prepare_tool, random_frames, write_video

FRAMES, HEIGHT, WIDTH = 9, 16, 16
LONG_CAPTION = "waves crash against black rocks under a grey sky " * 60  # > 512 tokens


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    captioned_video(folder, "a_fox.mp4", random_frames(12, 16, 16, seed=1), "a red fox runs across a snowy field")
    captioned_video(folder, "b_cats.webm", random_frames(9, 24, 40, seed=2), "  two cats &amp; a dog\n sleep ")
    captioned_video(folder, "c_reef.gif", random_frames(10, 20, 16, seed=3), "colourful fish swim through a reef")
    (folder / "more").mkdir()
    captioned_video(folder / "more", "d_waves.mov", random_frames(9, 16, 16, seed=4), LONG_CAPTION)
    return folder


def _flags(pipeline, output, *extra):
    return ["--pipeline", str(pipeline), "--output", str(output), "--height", str(HEIGHT), "--width", str(WIDTH),
            "--num-frames", str(FRAMES), "--dtype", "float32", "--no-progress", *extra]


def test_shards_hold_diffusers_latents_and_embeddings(pipeline, videos, tmp_path):
    from diffusers import AutoencoderKLWan, WanPipeline

    out = tmp_path / "shards"
    assert prepare_tool().main(_flags(pipeline, out, "--videos", str(videos), "--samples-per-shard", "3")) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    data = LatentShardDataset(out)
    sources = sorted(p for p in videos.rglob("*") if p.suffix != ".txt" and p.is_file())
    assert [data[i]["key"] for i in range(len(data))] == [f"{i:08d}" for i in range(4)]

    vae = AutoencoderKLWan.from_pretrained(pipeline / "vae").eval()
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float64).view(-1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float64).view(-1, 1, 1, 1)
    captions = [p.with_suffix(".txt").read_text().strip() for p in sources]
    with torch.no_grad():  # WanPipeline.__call__ runs encode_prompt without autograd
        embeds, _ = WanPipeline.from_pretrained(pipeline).encode_prompt(
            captions + [WAN_NEGATIVE_PROMPT], do_classifier_free_guidance=False, max_sequence_length=512)
        for i, source in enumerate(sources):
            mode = vae.encode(read_video(source, FRAMES, HEIGHT, WIDTH).unsqueeze(0)).latent_dist.mode()[0]
            sample = data[i]
            assert sample["latent"].shape == (4, 3, 2, 2) and sample["embed"].shape == (512, 24)
            torch.testing.assert_close(sample["latent"].double(), (mode.double() - mean) / std, rtol=0, atol=1e-6)
            torch.testing.assert_close(sample["embed"], embeds[i], rtol=0, atol=1e-6)
            assert sample["prompt"] == captions[i]
    torch.testing.assert_close(torch.load(out / "negative_prompt.pt"), embeds[-1], rtol=0, atol=1e-6)
    (record,) = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert record["key"] == "00000003" and record["action"] == "truncated"
    assert record["reason"].startswith("caption has ") and record["reason"].endswith("tokens; encoded its first 512")


def test_a_video_at_the_size_is_not_resampled(tmp_path):
    frames = random_frames(12, HEIGHT, WIDTH, seed=5)
    path = write_video(tmp_path / "v.webm", frames)
    import imageio.v3 as iio

    decoded = torch.from_numpy(np.stack(list(iio.imiter(path))[:FRAMES]))  # the codec's frames, not `frames`
    expected = (decoded.float() / 255 * 2 - 1).permute(3, 0, 1, 2)
    assert torch.equal(read_video(path, FRAMES, HEIGHT, WIDTH), expected)


@pytest.mark.parametrize("source, target", [((24, 40), (16, 16)), ((10, 12), (16, 16)), ((48, 64), (16, 32)),
                                            ((20, 16), (16, 16))])
def test_resize_and_crop_matches_pillow(source, target):
    frames = torch.from_numpy(random_frames(2, *source, seed=6))
    ours = resize_and_crop(frames, *target)
    (h0, w0), (h, w) = source, target
    scale = max(h / h0, w / w0)
    size = (max(h, round(h0 * scale)), max(w, round(w0 * scale)))  # covers the target, then centre crop
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    pillow = [[np.asarray(Image.fromarray(frame[..., c].numpy().astype(np.float32), mode="F")
                          .resize((size[1], size[0]), Image.BILINEAR)) for c in range(3)] for frame in frames]
    expected = torch.from_numpy(np.array(pillow))[..., top:top + h, left:left + w]
    assert ours.shape == (2, 3, h, w)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-3)  # on the 0..255 scale: float32 rounding


def test_teacher_samples_equal_the_teacher_sampler(pipeline, tmp_path):
    from diffusers import WanPipeline

    from megatron_rcm import load_model
    from megatron_rcm.diffusion.guidance import ClassifierFreeGuidance
    from megatron_rcm.diffusion.teacher_sampling import sample_rf_euler, sample_rf_unipc
    from megatron_rcm.parallel import parallel_context

    lines = ["a red fox runs across a snowy field", "", LONG_CAPTION]
    (tmp_path / "prompts.txt").write_text("\n".join(lines) + "\n")
    prompts = [line.strip() for line in lines if line]  # the blank line is no prompt
    for sampler, solve in (("unipc", sample_rf_unipc), ("euler", sample_rf_euler)):
        out = tmp_path / sampler
        flags = ["--prompts", str(tmp_path / "prompts.txt"), "--teacher", str(pipeline), "--steps", "3",
                 "--guidance-scale", "4", "--sampler", sampler, "--shift", "2", "--seed", "11"]
        assert prepare_tool().main(_flags(pipeline, out, *flags)) == 0
        data = LatentShardDataset(out)
        assert [data[i]["prompt"] for i in range(len(data))] == prompts
        with torch.no_grad():
            embeds, negative = WanPipeline.from_pretrained(pipeline).encode_prompt(
                prompts, negative_prompt=[WAN_NEGATIVE_PROMPT] * 2, max_sequence_length=512)
        with parallel_context(), torch.no_grad():
            teacher = ClassifierFreeGuidance(load_model(pipeline), negative[0], 4.0)
            for i in range(len(data)):
                noise = torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(11 + i))
                expected = solve(teacher, noise, embeds[i:i + 1], 3, 2.0)[0]
                torch.testing.assert_close(data[i]["embed"], embeds[i], rtol=0, atol=1e-6)
                torch.testing.assert_close(data[i]["latent"], expected, rtol=0, atol=1e-6)


def test_negative_prompt_embedding_alone(pipeline, tmp_path, capsys):
    from diffusers import WanPipeline

    tool = prepare_tool()
    assert tool.main(["--pipeline", str(pipeline), "--negative-prompt", "--output", str(tmp_path / "wan.pt")]) == 0
    assert tool.main(["--pipeline", str(pipeline), "--negative-prompt", "blurry, static",
                      "--output", str(tmp_path / "own.pt")]) == 0
    assert "wrote the negative-prompt embedding [512, 24]" in capsys.readouterr().out
    with torch.no_grad():
        expected, _ = WanPipeline.from_pretrained(pipeline).encode_prompt(
            [WAN_NEGATIVE_PROMPT, "blurry, static"], do_classifier_free_guidance=False, max_sequence_length=512)
    torch.testing.assert_close(torch.load(tmp_path / "wan.pt"), expected[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.load(tmp_path / "own.pt"), expected[1], rtol=0, atol=1e-6)


def test_vae_tiling_flag_encodes_as_diffusers_tiled_vae(pipeline, tmp_path):
    """--vae-tiling reaches the VAE: a frame wider than diffusers' 256-pixel tile is encoded as the
    tiled AutoencoderKLWan encodes it, which differs from untiled encoding near the seams."""
    from diffusers import AutoencoderKLWan

    (tmp_path / "images").mkdir()
    Image.fromarray(random_frames(1, 16, 272, seed=7)[0]).save(tmp_path / "images" / "wide.png")
    (tmp_path / "images" / "wide.txt").write_text("a long train crosses a bridge")
    out = tmp_path / "out"
    assert prepare_tool().main(["--pipeline", str(pipeline), "--images", str(tmp_path / "images"), "--output",
                                str(out), "--height", "16", "--width", "272", "--num-frames", "1", "--vae-tiling",
                                "--no-progress"]) == 0
    vae = AutoencoderKLWan.from_pretrained(pipeline / "vae").eval()
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float64).view(-1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float64).view(-1, 1, 1, 1)
    image = read_video(tmp_path / "images" / "wide.png", 1, 16, 272).unsqueeze(0)
    with torch.no_grad():
        untiled = vae.encode(image).latent_dist.mode()[0].double()
        vae.enable_tiling()
        tiled = vae.encode(image).latent_dist.mode()[0].double()
    latent = LatentShardDataset(out)[0]["latent"].double()
    torch.testing.assert_close(latent, (tiled - mean) / std, rtol=0, atol=1e-6)
    assert (latent - (untiled - mean) / std).abs().max() > 1e-3  # the seams are there
