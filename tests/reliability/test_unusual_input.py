"""Plausible unusual input to the command-line tools, beyond the catalogue (tests/reliability/catalogue.py).

Valid but unusual input must simply work: videos of odd sizes, with an alpha channel, two videos of one
stem sharing a caption, paths with spaces and non-ASCII characters, a manifest with CRLF line ends.
Bad input must end in one line on stderr, a non-zero status, and nothing lost: a manifest or prompt file
that starts with a byte-order mark, a blank --prompt, a damaged prepare.json, a conversion onto its own
input, a --profile that is a folder or not JSON, eval_digits' --json in a missing folder (each of these
broke the contract when this file was written).
"""

import argparse
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.data.video_files import ROOT, captioned_video, prepare_tool, random_frames, write_video
from tests.generation.common import exit_status, script
from tests.wan_pipeline import tiny_wan_pipeline

SIZE = ["--height", "16", "--width", "16", "--num-frames", "9"]
BOM = "\ufeff"


@pytest.fixture(scope="module")
def pipeline():
    return tiny_wan_pipeline()


def _prepare(argv, capsys):
    capsys.readouterr()
    try:
        code = prepare_tool().main([*map(str, argv), "--no-progress"])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err, prog):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err, err
    return lines[0]


def _odd_size_video(path, frames):
    """An mp4 of odd width and height (yuv444p: yuv420p cannot hold odd sizes)."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(path), (frames.shape[2], frames.shape[1]), fps=16, codec="libx264",
                                         pix_fmt_out="yuv444p", macro_block_size=1)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def _alpha_webm(path, frames):
    import imageio_ffmpeg

    rgba = np.concatenate([frames, np.full((*frames.shape[:3], 1), 128, np.uint8)], -1)
    writer = imageio_ffmpeg.write_frames(str(path), (frames.shape[2], frames.shape[1]), fps=16, codec="libvpx-vp9",
                                         pix_fmt_in="rgba", pix_fmt_out="yuva420p", macro_block_size=1)
    writer.send(None)
    for frame in rgba:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def test_unusual_but_valid_videos_all_become_samples(pipeline, tmp_path, capsys):
    """17 x 31 pixels, an alpha channel, a.mp4 and a.webm sharing a.txt, a caption with CRLF, tabs and trailing
    spaces, a folder and a file name with spaces and non-ASCII characters, an animated PNG: every one is a sample."""
    folder = tmp_path / "my clips"
    sub = folder / "vidéos 日本"
    sub.mkdir(parents=True)
    frames = random_frames(9, 16, 16, seed=1)
    (folder / "a_odd.txt").write_text("odd size")
    _odd_size_video(folder / "a_odd.mp4", random_frames(9, 17, 31, seed=2))
    _alpha_webm(folder / "b_alpha.webm", frames)
    (folder / "b_alpha.txt").write_text("alpha")
    write_video(folder / "c_dup.mp4", frames)
    write_video(folder / "c_dup.webm", frames)
    (folder / "c_dup.txt").write_text("one caption, two videos")
    captioned_video(folder, "d_crlf.mp4", frames, "a red fox\r\nruns \t \r\n")
    captioned_video(sub, "clip é 1.mp4", frames, "café")
    output = tmp_path / "out é"
    code, out, err = _prepare(["--pipeline", pipeline, "--videos", folder, "--output", output, *SIZE], capsys)
    assert code == 0 and "wrote 6 of 6 samples" in out, (out, err)
    from PIL import Image

    png = tmp_path / "png"
    png.mkdir()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(png / "a.png", save_all=True, append_images=images[1:], duration=60, loop=0)
    (png / "a.txt").write_text("animated png")
    code, out, err = _prepare(["--pipeline", pipeline, "--images", png, "--output", tmp_path / "png_out",
                               "--height", "16", "--width", "16", "--num-frames", "1"], capsys)
    assert code == 0 and "wrote 1 of 1 samples" in out, (out, err)


def test_a_manifest_with_crlf_a_symlink_and_a_video_twice_is_read(pipeline, tmp_path, capsys):
    video = captioned_video(tmp_path, "v.mp4", random_frames(9, 16, 16, seed=1), None)
    (tmp_path / "link.mp4").symlink_to(video)
    rows = [{"video": "v.mp4", "caption": "one"}, {"video": "link.mp4", "caption": "two"},
            {"video": "v.mp4", "caption": "one"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes("".join(json.dumps(r) + "\r\n" for r in rows).encode() + b"  \t\r\n")
    code, out, err = _prepare(["--pipeline", pipeline, "--manifest", manifest, "--output", tmp_path / "o", *SIZE],
                              capsys)
    assert code == 0 and "wrote 3 of 3 samples" in out, (out, err)


def test_a_manifest_with_a_byte_order_mark_is_read(pipeline, tmp_path, capsys):
    captioned_video(tmp_path, "v.mp4", random_frames(9, 16, 16, seed=1), None)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(BOM + json.dumps({"video": "v.mp4", "caption": "a red fox"}) + "\n", encoding="utf-8")
    code, out, err = _prepare(["--pipeline", pipeline, "--manifest", manifest, "--output", tmp_path / "o", *SIZE],
                              capsys)
    assert code == 0 and "wrote 1 of 1 samples" in out, err


def test_a_byte_order_mark_is_not_part_of_the_first_prompt_of_prepare_data(tmp_path):
    from megatron_rcm.data.prepare import list_prompts

    (tmp_path / "p.txt").write_text(BOM + "a red fox runs\r\ntwo cats sleep\r\n", encoding="utf-8")
    assert [item.caption for item in list_prompts(tmp_path / "p.txt")] == ["a red fox runs", "two cats sleep"]


def _read_prompts(prompt=None, prompts=None):
    return script("examples/generate.py").read_prompts(argparse.Namespace(prompt=prompt, prompts=prompts))


def test_a_byte_order_mark_is_not_part_of_the_first_prompt_of_generate(tmp_path):
    (tmp_path / "p.txt").write_text(BOM + "a red fox runs\r\n\r\ntwo cats sleep\r\n", encoding="utf-8")
    assert _read_prompts(prompts=tmp_path / "p.txt") == ["a red fox runs", "two cats sleep"]


def test_a_blank_prompt_is_refused_like_an_empty_one():
    from megatron_rcm.generation import GenerationError

    with pytest.raises(GenerationError, match="no prompt given"):
        _read_prompts(prompt="  \t ")


@pytest.mark.parametrize("settings", ['{"pipeline": ', "[1, 2]"], ids=["truncated", "not-an-object"])
def test_a_damaged_prepare_json_is_one_line(pipeline, tmp_path, capsys, settings):
    (tmp_path / "videos").mkdir()
    captioned_video(tmp_path / "videos", "a.mp4", random_frames(9, 16, 16, seed=1), "a fox")
    output = tmp_path / "o"
    output.mkdir()
    (output / "prepare.json").write_text(settings)
    code, _, err = _prepare(["--pipeline", pipeline, "--videos", tmp_path / "videos", "--output", output, *SIZE],
                            capsys)
    assert code == 1 and "prepare.json" in _one_line(err, "prepare_data")
    assert (output / "prepare.json").read_text() == settings and sorted(p.name for p in output.iterdir()) == [
        "prepare.json"]


def test_converting_a_model_onto_itself_is_refused_and_keeps_it(pipeline, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(pipeline / "transformer", model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    capsys.readouterr()
    code = exit_status("tools/convert_checkpoint.py", "--from", "diffusers", "--to", "megatron", "--input", model,
                       "--output", model, "--overwrite")
    after = {p.name: p.read_bytes() for p in model.iterdir()}
    assert after == before, sorted(after)
    assert code == 1 and "--input" in _one_line(capsys.readouterr().err, "convert_checkpoint")


def _plan(argv, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    import plan

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        plan.main(["--model", "wan2.1-t2v-1.3b", "--gpus", "8", "--gpu-memory-gib", "80", *map(str, argv)])
    return exit_info.value.code, capsys.readouterr().err


def test_a_profile_that_is_not_json_names_the_flag_and_the_file(tmp_path, capsys):
    (tmp_path / "profile.json").write_text("not json\n")
    code, err = _plan(["--profile", tmp_path / "profile.json"], capsys)
    line = _one_line(err, "plan")
    assert code == 2 and "--profile" in line and str(tmp_path / "profile.json") in line, line


def test_a_profile_that_is_a_folder_is_not_said_to_be_missing(tmp_path, capsys):
    code, err = _plan(["--profile", tmp_path], capsys)
    line = _one_line(err, "plan")
    assert code == 2 and "does not exist" not in line, line


def test_eval_digits_json_in_a_missing_folder_is_refused_before_the_evaluation(tmp_path):
    target = tmp_path / "no" / "folder" / "numbers.json"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "eval_digits.py"), "--baselines", "--reference",
                             "16", "--seeds", "0", "--per-prompt", "2", "--json", str(target)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and not target.exists()
    line = _one_line(result.stderr, "eval_digits")
    assert "--json" in line and "| real videos" not in result.stdout, (line, result.stdout[-500:])


@pytest.mark.parametrize("content, reason", [('{"matmul_tflops": "fast"}', "matmul_tflops must be a positive number"),
                                             ('{"hbm_bandwidth_gbs": -5}', "hbm_bandwidth_gbs must be a positive"),
                                             ("[785]", "a profile is a JSON object, got list")],
                         ids=["text", "negative", "a-list"])
def test_a_profile_with_values_no_calibration_writes_is_named(tmp_path, capsys, content, reason):
    """A hand-edited profile: a text value crashed the planner, a negative one planned negative seconds."""
    (tmp_path / "profile.json").write_text(content)
    code, err = _plan(["--profile", tmp_path / "profile.json"], capsys)
    line = _one_line(err, "plan")
    assert code == 2 and "--profile" in line and reason in line, line
