"""A video or image size beyond the model's RoPE table is refused in one line before any output is
made, by examples/generate.py (docs/generation.md's Cosmos command at the pipeline's default 768 x 1360,
with a model that covers fewer patches) and by tools/prepare_data.py's teacher mode. The model
refused such latents only when first called, with a traceback, after the slow loading; and
prepare_data had already recorded its settings in the output folder by then."""

from tests.cosmos_pipeline import tiny_cosmos_pipeline
from tests.generation.common import exit_status, generate

LIMIT = "is more than the model takes: at most 128"  # cosmos-tiny-a: 8 patches of 2 x 8 pixels


def _one_error_line(capsys, prog):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"{prog}: error: --height") and LIMIT in err[-1], err
    assert not any("Traceback" in line for line in err), err


def test_generate_refuses_a_size_the_model_cannot_take(tmp_path, capsys):
    pipeline = tiny_cosmos_pipeline()
    assert generate("--pipeline", pipeline, "--checkpoint", pipeline / "transformer", "--prompt", "a lighthouse",
                    "--output", tmp_path / "images") == 1
    _one_error_line(capsys, "generate")
    assert list(tmp_path.iterdir()) == []


def test_prepare_data_refuses_it_before_making_the_output(tmp_path, capsys):
    pipeline = tiny_cosmos_pipeline()
    (tmp_path / "prompts.txt").write_text("a lighthouse on a cliff at sunset\n")
    assert exit_status("tools/prepare_data.py", "--pipeline", pipeline, "--prompts", tmp_path / "prompts.txt",
                       "--teacher", pipeline, "--output", tmp_path / "data", "--height", "512", "--width", "512",
                       "--steps", "2") == 1
    _one_error_line(capsys, "prepare_data")
    assert not (tmp_path / "data").exists()
