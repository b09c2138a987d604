"""The VAE and text encoders against diffusers' own classes and the pipelines' encode_prompt: Wan2.1
(UMT5) and Cosmos-Predict2 (T5; the Wan VAE on one-frame images)."""

import shutil

import pytest
import torch

from megatron_rcm.encoders import (PipelineFolderError, check_pipeline_folder, load_text_encoder, load_vae,
                                   pipeline_kind, vae_geometry)
from megatron_rcm.testing import norm_relative_error
from tests.cosmos_pipeline import load_pipeline, pipeline_decode, tiny_cosmos_pipeline
from tests.wan_pipeline import tiny_wan_pipeline


@pytest.fixture(scope="module")
def folder():
    return tiny_wan_pipeline()


def _video(batch, frames, size, seed):
    return torch.rand(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _diffusers_vae(folder):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(folder / "vae").eval()


def _config_stats(vae):
    shape = (1, vae.config.z_dim, 1, 1, 1)
    return (torch.tensor(vae.config.latents_mean, dtype=torch.float64).view(shape),
            torch.tensor(vae.config.latents_std, dtype=torch.float64).view(shape))


def test_vae_encode_is_the_normalised_posterior_mode(folder):
    video = _video(2, 9, 16, seed=1)
    latents = load_vae(folder).encode(video)
    vae = _diffusers_vae(folder)
    with torch.no_grad():
        mode = vae.encode(video).latent_dist.mode()
    mean, std = _config_stats(vae)
    expected = (mode.double() - mean) / std
    assert latents.shape == (2, 4, 3, 2, 2) and latents.dtype == torch.float32
    torch.testing.assert_close(latents.double(), expected, rtol=0, atol=1e-6)
    assert (mean != 0).all() and (std != 1).all()  # the normalisation is exercised


def test_vae_decode_matches_diffusers_decode(folder):
    # float64 throughout: float32 rounding of the de-normalisation grows to ~1e-6 through the decoder
    wan_vae = load_vae(folder, dtype=torch.float64)
    latents = wan_vae.encode(_video(1, 5, 16, seed=2).double())
    pixels = wan_vae.decode(latents)
    vae = _diffusers_vae(folder).double()
    mean, std = _config_stats(vae)
    with torch.no_grad():
        expected = vae.decode(latents * std + mean).sample
    assert pixels.shape == (1, 3, 5, 16, 16) and pixels.dtype == torch.float64
    assert (pixels.abs() < 1).float().mean() > 0.9  # mostly inside the clamp to [-1, 1]
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-12)


def test_vae_strides(folder):
    vae = load_vae(folder)
    assert (vae.latent_channels, vae.spatial_stride, vae.temporal_stride) == (4, 8, 4) == vae_geometry(folder)
    video = torch.rand(1, 3, 9, 16, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert vae.encode(video).shape == (1, 4, 3, 2, 3)


def test_vae_bfloat16_is_close_to_float32(folder):
    video = _video(1, 5, 16, seed=4)
    latents = load_vae(folder, dtype=torch.bfloat16).encode(video)
    assert latents.dtype == torch.bfloat16
    # a few bf16 roundings (2**-9 relative each) through the encoder: 3.4e-3 to 5.3e-3 on three seeds
    assert norm_relative_error(latents.float(), load_vae(folder).encode(video)) < 1e-2


PROMPTS = ["a red fox runs across a snowy field at dawn",
           "  two cats &amp; a   dog\n sleep\ton a warm windowsill  ",
           "colourful fish swim " * 120,  # longer than 512 tokens: truncated
           "zebra quartz ☃"]  # characters the tokenizer never saw


def test_text_encoder_matches_wan_pipeline_encode_prompt(folder):
    from diffusers import WanPipeline

    encoder = load_text_encoder(folder)
    embeddings = encoder.encode(PROMPTS)
    pipe = WanPipeline.from_pretrained(folder)
    with torch.no_grad():  # as WanPipeline.__call__ runs it (with autograd on, CPU attention takes another kernel)
        expected, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=512)
    assert embeddings.shape == (4, 512, 24)
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=1e-6)
    counts = encoder.num_tokens(PROMPTS)
    assert counts[2] > 512 and max(counts[:2] + counts[3:]) < 512
    for row, count in zip(embeddings, counts):
        used = min(count, 512)
        assert (row[:used].abs().sum(-1) > 0).all() and (row[used:] == 0).all()


def test_text_encoder_shorter_max_length(folder):
    from diffusers import WanPipeline

    embeddings = load_text_encoder(folder, max_length=16).encode(PROMPTS[:2])
    with torch.no_grad():
        expected, _ = WanPipeline.from_pretrained(folder).encode_prompt(
            PROMPTS[:2], do_classifier_free_guidance=False, max_sequence_length=16)
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("damage, message", [
    (lambda p: shutil.rmtree(p / "vae"), "has no vae/ folder"),
    (lambda p: (p / "vae" / "config.json").unlink(), "vae has no config.json"),
    (lambda p: (p / "vae" / "diffusion_pytorch_model.safetensors").unlink(), "vae has no weights"),
    (lambda p: (p / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL"}'),
     "describes 'AutoencoderKL', expected 'AutoencoderKLWan'"),
    (lambda p: (p / "vae" / "config.json").write_text("{not json"), "is not a readable JSON file"),
])
def test_check_pipeline_folder_names_what_is_missing(folder, tmp_path, damage, message):
    copy = tmp_path / "pipeline"
    shutil.copytree(folder, copy)
    check_pipeline_folder(copy, ["vae", "text_encoder", "tokenizer", "transformer", "scheduler"])
    damage(copy)
    with pytest.raises(PipelineFolderError, match=message) as error:
        load_vae(copy)
    assert "\n" not in str(error.value)


def test_check_pipeline_folder_other_errors(folder, tmp_path):
    with pytest.raises(PipelineFolderError, match="does not exist"):
        load_text_encoder(tmp_path / "missing")
    with pytest.raises(PipelineFolderError, match="is the folder of one model .WanTransformer3DModel., not a pipeline"):
        load_text_encoder(folder / "transformer")
    with pytest.raises(PipelineFolderError, match="unknown pipeline component 'unet'"):
        check_pipeline_folder(folder, ["unet"])


def test_fixture_transformer_loads_into_the_project_model(folder):
    from diffusers import WanTransformer3DModel

    from megatron_rcm import load_model
    from megatron_rcm.models.diffusers_float64 import float64_exact
    from megatron_rcm.parallel import parallel_context

    g = torch.Generator().manual_seed(7)
    x, t, text = (torch.randn(1, 4, 2, 4, 4, generator=g, dtype=torch.float64), torch.tensor([321.0], dtype=torch.float64),
                  torch.randn(1, 5, 24, generator=g, dtype=torch.float64))
    with float64_exact(), torch.no_grad():
        reference = WanTransformer3DModel.from_pretrained(folder / "transformer").double().eval()
        expected = reference(x, t, text).sample
    with parallel_context(), torch.no_grad():
        model = load_model(folder, params_dtype=torch.float64)  # the pipeline folder itself
        torch.testing.assert_close(model(x, t, text), expected, rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def cosmos():
    return tiny_cosmos_pipeline()


def test_pipeline_kinds(folder, cosmos, tmp_path):
    from diffusers.pipelines.cosmos.pipeline_cosmos2_text2image import DEFAULT_NEGATIVE_PROMPT

    wan, cos = pipeline_kind(folder), pipeline_kind(cosmos)
    assert (wan.pipeline_class, wan.image, wan.text_encoder_class) == ("WanPipeline", False, "UMT5EncoderModel")
    assert (cos.pipeline_class, cos.image, cos.text_encoder_class) == ("Cosmos2TextToImagePipeline", True,
                                                                       "T5EncoderModel")
    assert cos.pipeline_negative_prompt == cos.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    pipe = load_pipeline(cosmos)  # the pipeline's own defaults
    import inspect

    defaults = inspect.signature(pipe.__call__).parameters
    assert (cos.height, cos.width, cos.guidance_scale) == tuple(defaults[k].default for k in
                                                                 ("height", "width", "guidance_scale"))
    copy = tmp_path / "no_index"  # without model_index.json: the text encoder's model type tells
    shutil.copytree(cosmos, copy)
    (copy / "model_index.json").unlink()
    assert pipeline_kind(copy) == cos
    (copy / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(PipelineFolderError, match="describes 'StableDiffusionPipeline'; supported: WanPipeline or"):
        pipeline_kind(copy)
    with pytest.raises(PipelineFolderError, match="describes 'WanTransformer3DModel', expected "
                                                  "'CosmosTransformer3DModel' .the transformer of a Cosmos2Text"):
        shutil.rmtree(copy)
        shutil.copytree(cosmos, copy)
        shutil.rmtree(copy / "transformer")
        shutil.copytree(folder / "transformer", copy / "transformer")
        check_pipeline_folder(copy, ["transformer"])


def test_wan_kind_defaults_are_the_pipelines(folder):
    """The size and guidance tools use when a flag is left out are WanPipeline.__call__'s own defaults."""
    import inspect

    from diffusers import WanPipeline

    wan = pipeline_kind(folder)
    defaults = inspect.signature(WanPipeline.__call__).parameters
    assert (wan.num_frames, wan.height, wan.width, wan.guidance_scale) == tuple(
        defaults[k].default for k in ("num_frames", "height", "width", "guidance_scale"))
    assert wan.pipeline_negative_prompt == "" and defaults["negative_prompt"].default is None


def test_cosmos_text_encoder_matches_the_pipelines_encode_prompt(cosmos):
    encoder = load_text_encoder(cosmos)
    assert not encoder.clean_prompts and type(encoder.text_encoder).__name__ == "T5EncoderModel"
    embeddings = encoder.encode(PROMPTS)
    with torch.no_grad():
        expected, _ = load_pipeline(cosmos).encode_prompt(PROMPTS, do_classifier_free_guidance=False,
                                                             max_sequence_length=512)
    assert embeddings.shape == (4, 512, 24)
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=1e-6)
    counts = encoder.num_tokens(PROMPTS)
    assert counts[2] > 512
    for row, count in zip(embeddings, counts):
        used = min(count, 512)
        assert (row[:used].abs().sum(-1) > 0).all() and (row[used:] == 0).all()
    # Wan would clean the second prompt ("&amp;", runs of blanks); Cosmos encodes it as written
    assert not torch.equal(embeddings[1], encoder.encode([" ".join(PROMPTS[1].replace("&amp;", "&").split())])[0])


def test_cosmos_image_latents_decode_as_the_pipeline_decodes(cosmos):
    """One frame (an image) encodes to one latent frame; decoding it is the pipeline's own decode
    (its sigma_data and float32 reciprocal of latents_std, then AutoencoderKLWan), bit for bit."""
    vae = load_vae(cosmos)
    assert vae_geometry(cosmos) == (4, 8, 4)
    image = _video(2, 1, 16, seed=8)
    latents = vae.encode(image)
    assert latents.shape == (2, 4, 1, 2, 2)
    pipe = load_pipeline(cosmos)
    assert torch.equal(vae.decode(latents), pipeline_decode(pipe, latents))
    config = pipe.vae.config
    with torch.no_grad():
        mode = pipe.vae.encode(image).latent_dist.mode()
    mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1)
    torch.testing.assert_close(latents, (mode - mean) * inv_std, rtol=0, atol=1e-6)


def test_vae_tiling_codes_as_diffusers_tiled_vae(folder):
    """``tiling=True`` is diffusers' own tiled coding (here a frame wider than its 256-pixel tile), which
    differs from untiled coding near the seams: the flag reaches the VAE. Float64, as the decode test."""
    image = torch.rand(2, 3, 1, 16, 264, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 2 - 1
    tiled = load_vae(folder, dtype=torch.float64, tiling=True)
    latents = tiled.encode(image)
    vae = _diffusers_vae(folder).double()
    vae.enable_tiling()
    mean, std = _config_stats(vae)
    with torch.no_grad():
        mode = vae.encode(image).latent_dist.mode()
        pixels = vae.decode(latents * std + mean).sample
    torch.testing.assert_close(latents, (mode - mean) / std, rtol=0, atol=1e-12)
    torch.testing.assert_close(tiled.decode(latents), pixels, rtol=0, atol=1e-12)
    untiled = load_vae(folder, dtype=torch.float64)
    assert (latents - untiled.encode(image)).abs().max() > 1e-3  # the seams are there
