"""Shared by the generation tests: examples/generate.py and tools/convert_checkpoint.py as modules,
and the tiny pipeline's pieces loaded the way an independent caller would."""

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SIZE = ["--height", "32", "--width", "32", "--num-frames", "5"]
LATENT_SHAPE = (1, 4, 2, 4, 4)  # tiny VAE: 4 channels, strides 4 (time) and 8 (space)


def script(relative):
    """A script of the repository (examples/, tools/) as a module."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem + "_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exit_status(path, *argv) -> int:
    """The exit status of the script at ``path`` run in this process (its main's return value, or
    the status of the SystemExit a one-line error raises)."""
    try:
        return script(path).main([*map(str, argv), "--no-progress"])
    except SystemExit as e:
        return e.code


def generate(*argv) -> int:
    """examples/generate.py's exit status."""
    return exit_status("examples/generate.py", *argv)


def generate_one(pipeline, prompt, size, output, *extra):
    """examples/generate.py with the pipeline's own transformer on one prompt, latents saved; it must succeed."""
    assert generate("--pipeline", pipeline, "--checkpoint", Path(pipeline) / "transformer", "--prompt", prompt, *size,
                    "--output", output, "--save-latents", *extra) == 0


def embed(pipeline, prompts, dtype=torch.float32):
    from megatron_rcm.encoders import load_text_encoder

    return load_text_encoder(pipeline, dtype=dtype).encode(prompts)


def saved_latents(folder):
    (path,) = Path(folder).glob("*.pt")
    return torch.load(path, weights_only=True)
