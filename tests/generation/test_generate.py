"""examples/generate.py on a tiny real Wan2.1 pipeline: the mp4, the sidecar, latents equal to the
samplers called directly with the documented noise, and the error catalogue."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from megatron_rcm import load_model
from megatron_rcm.diffusion import ClassifierFreeGuidance, TrigFlowDenoiser, sample_few_step, sample_rf_unipc
from megatron_rcm.atomic_output import new_dir_mode
from megatron_rcm.parallel import parallel_context
from tests.wan_pipeline import tiny_wan_pipeline

# the mp4 writer is the "data" extra's (CI installs it; the GPU machines lack it and run no CPU test)
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="install the 'data' extra to write mp4s")

from .common import LATENT_SHAPE, ROOT, SIZE, embed, generate, generate_one, saved_latents

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


def test_teacher_mode_is_the_guided_unipc_sampler(pipeline, tmp_path, capsys):
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()  # as in a fresh process: --no-progress must turn it off
    _run(pipeline, tmp_path / "out", "--teacher-steps", "3", "--guidance-scale", "2.5", "--negative-prompt",
         "blurry, static", "--shift", "2", "--seed", "3")
    assert capsys.readouterr().err == ""  # no "Loading weights" bar either

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
    "binary prompts file": (["--prompts", "{binary}"], "--prompts {binary} cannot be read ('utf-8' codec can't"),
    "output in a file": (["--output", "{file}/out"], "--output {file}/out cannot be written: {file} is not a folder"),
    "output is a file": (["--output", "{file}", "--force"], "--output {file} exists and is not a folder"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_input_is_one_line_and_exit_1(name, pipeline, tmp_path, capsys):
    extra, message = ERRORS[name]
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "binary.txt").write_bytes(b"a fox\n\xff\xfe\x00\x81 runs\n")
    (tmp_path / "file").write_text("kept")
    values = dict(pipeline=pipeline, tmp=tmp_path, empty=tmp_path / "empty.txt", binary=tmp_path / "binary.txt",
                  file=tmp_path / "file",
                  no_tokenizer=_without_tokenizer(pipeline, tmp_path) if "tokenizer" in name else None)
    argv = ["--pipeline", pipeline, "--checkpoint", pipeline / "transformer", "--output", tmp_path / "out", *SIZE]
    extra = [e.format(**values) for e in extra]
    if "--prompts" not in extra:
        argv += ["--prompt", PROMPT]
    capsys.readouterr()
    assert generate(*argv, *extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("generate: error: ") and message.format(**values) in err[-1], err
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*.tmp-*"))
    assert (tmp_path / "file").read_text() == "kept"


@pytest.mark.parametrize("flag, value, expected", [
    ("--guidance-scale", "nan", "a number > 0"),
    ("--guidance-scale", "inf", "a number > 0"),
    ("--shift", "0", "a number > 0"),
    ("--shift", "-1", "a number > 0"),
    ("--sigma-max", "inf", "a number > 0"),
    ("--mid-times", "nan", "a number > 0"),
    ("--teacher-steps", "-2", "an integer >= 0"),
    ("--seed", "99999999999999999999", "an integer <= 9223372036854775807 (2**63 - 1)"),
    ("--seed", "-1", "an integer >= 0"),
])
def test_a_value_no_sampler_takes_is_refused_by_the_parser(pipeline, tmp_path, capsys, flag, value, expected):
    argv = ["--pipeline", pipeline, "--checkpoint", pipeline / "transformer", "--prompt", PROMPT, *SIZE,
            "--output", tmp_path / "out", "--teacher-steps", "2", flag, value]
    assert generate(*argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"argument {flag}: expected {expected}, got '{value}' (see --help)" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(300)
def test_sigterm_leaves_no_output_and_says_so(pipeline, tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "generate.py"), "--pipeline", str(pipeline),
                             "--checkpoint", str(pipeline / "transformer"), "--prompt", PROMPT, *SIZE,
                             "--teacher-steps", "100000", "--output", str(tmp_path / "out"), "--no-progress"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob(".out.tmp-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    time.sleep(1)  # into the loading or sampling
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines() == ["generate: error: interrupted"], err
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(pipeline, tmp_path, capsys):
    argv = ["--pipeline", pipeline, "--checkpoint", pipeline / "vae", "--prompt", PROMPT, "--output", tmp_path / "o"]
    assert generate(*argv, *SIZE, "--debug") == 1
    assert "Traceback" in capsys.readouterr().err


def test_misspelt_flag_is_one_line_and_exit_2(pipeline, tmp_path, capsys):
    argv = ["--pipeline", pipeline, "--checkpoint", pipeline / "transformer", "--prompt", PROMPT, "--output", tmp_path]
    assert generate(*argv, "--step", "2") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unrecognized arguments: --step 2" in line and line.endswith("(see --help)")
