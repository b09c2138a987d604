"""The shipped Moving Digits teacher: a diffusers folder that load_model and diffusers both read, and that denoises."""

import importlib.util
from pathlib import Path

import pytest
import torch

from megatron_rcm import load_model
from megatron_rcm.data.moving_digits import make_videos
from megatron_rcm.data.toy_text_encoder import ToyTextEncoder
from megatron_rcm.parallel import ParallelConfig, parallel_context

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "assets" / "moving_digits" / "teacher"


def _tool():
    spec = importlib.util.spec_from_file_location("train_digits_teacher", ROOT / "tools" / "train_digits_teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runtime():
    with parallel_context(ParallelConfig()):
        yield


def test_teacher_denoises_held_out_videos_and_uses_the_prompt(runtime):
    model = load_model(TEACHER).eval()
    seed = int(torch.randint(1 << 30, ()))
    real = make_videos("test", 64, seed=seed)
    encoder = ToyTextEncoder()
    text = encoder.encode_batch(real.prompts)
    negative = encoder.negative().expand_as(text)
    eps = torch.randn(real.videos.shape, generator=torch.Generator().manual_seed(seed))

    def x0_error(s, prompt):
        x_s = (1 - s) * real.videos + s * eps
        with torch.no_grad():
            v = model(x_s, torch.full((64,), 1000 * s), prompt)
        assert v.shape == real.videos.shape and torch.isfinite(v).all()
        return (x_s - s * v - real.videos).square().mean()

    # the best constant guess (the batch mean video) is the bar a trained denoiser must clear by far
    trivial = (real.videos - real.videos.mean(0)).square().mean()
    assert x0_error(0.5, text) < 0.3 * trivial
    # at high noise the prompt carries most of what is known about x0 (shipped teacher: ratio about 0.65)
    assert x0_error(0.9, text) < 0.85 * x0_error(0.9, negative)


def test_exported_folder_is_read_identically_by_load_model_and_diffusers(runtime, tmp_path):
    from diffusers import WanTransformer3DModel

    from megatron_rcm.models.wan import WanModel, save_diffusers_folder, wan_config

    tool = _tool()
    model = WanModel(wan_config("tiny-a", **tool.DIGITS_TEACHER, use_cpu_initialization=True)).eval()
    folder = tmp_path / "teacher"
    save_diffusers_folder(model, folder)
    x, t, text = torch.randn(2, 1, 8, 16, 16), torch.rand(2) * 1000, torch.randn(2, 8, 32)
    with torch.no_grad():
        ours = model(x, t, text)
        assert torch.equal(load_model(folder).eval()(x, t, text), ours)
        reference = WanTransformer3DModel.from_pretrained(folder).eval()(x, t, text).sample
    assert (reference - ours).norm() < 1e-5 * ours.norm()
