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


def test_teacher_denoises_held_out_videos(runtime):
    model = load_model(TEACHER).eval()
    seed = int(torch.randint(1 << 30, ()))
    real = make_videos("test", 32, seed=seed)
    text = ToyTextEncoder().encode_batch(real.prompts)
    eps = torch.randn(real.videos.shape, generator=torch.Generator().manual_seed(seed))
    s = 0.5
    with torch.no_grad():
        v = model((1 - s) * real.videos + s * eps, torch.full((32,), 1000 * s), text)
    assert v.shape == real.videos.shape and torch.isfinite(v).all()
    x0_hat = (1 - s) * real.videos + s * eps - s * v
    # the best constant guess (the batch mean video) is the bar a trained denoiser must clear by far
    trivial = (real.videos - real.videos.mean(0)).square().mean()
    assert (x0_hat - real.videos).square().mean() < 0.3 * trivial


def test_exported_folder_is_read_identically_by_load_model_and_diffusers(runtime, tmp_path):
    from diffusers import WanTransformer3DModel

    from megatron_rcm.models.wan import WanModel, wan_config

    tool = _tool()
    model = WanModel(wan_config("tiny-a", **tool.DIGITS_TEACHER, use_cpu_initialization=True)).eval()
    tool.save_diffusers_folder(model, tmp_path)
    x, t, text = torch.randn(2, 1, 8, 16, 16), torch.rand(2) * 1000, torch.randn(2, 8, 32)
    with torch.no_grad():
        ours = model(x, t, text)
        assert torch.equal(load_model(tmp_path).eval()(x, t, text), ours)
        reference = WanTransformer3DModel.from_pretrained(tmp_path).eval()(x, t, text).sample
    assert (reference - ours).norm() < 1e-5 * ours.norm()
