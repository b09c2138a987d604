"""tools/prepare_data.py on bad input: a bad item is skipped and reported with its reason (the
exit status says so; --strict stops), a bad command stops with one line naming what to change."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from megatron_rcm.data.latent_shards import LatentShardDataset

from .video_files import ROOT, captioned_video, prepare_tool, random_frames, write_video

SIZE = ["--height", "16", "--width", "16", "--num-frames", "9"]


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    """One good video and one of each kind of bad item, with the reason each must be skipped for."""
    folder = tmp_path_factory.mktemp("bad_videos")
    frames = random_frames(9, 16, 16, seed=1)
    captioned_video(folder, "a_good.mp4", frames, "\ufeffa red fox runs")  # a byte-order mark is no text
    (folder / "b_garbage.mp4").write_bytes(b"this is not a video file " * 20)
    (folder / "b_garbage.txt").write_text("garbage")
    whole = write_video(folder / "whole.mp4", frames).read_bytes()
    (folder / "whole.mp4").unlink()
    (folder / "c_truncated.mp4").write_bytes(whole[:len(whole) // 2])
    (folder / "c_truncated.txt").write_text("cut in half")
    captioned_video(folder, "d_short.webm", frames[:5], "five frames")
    captioned_video(folder, "e_no_caption.gif", frames, None)
    captioned_video(folder, "f_empty_caption.mov", frames, " \n\t ")
    captioned_video(folder, "g_latin1.mp4", frames, None).with_suffix(".txt").write_bytes("caf\xe9".encode("latin-1"))
    (folder / "notes.md").write_text("not a video: ignored")
    from PIL import Image

    Image.fromarray(frames[0, :, :, 0].astype("uint16") * 257).save(folder / "h_16bit.png")  # mode I;16
    (folder / "h_16bit.txt").write_text("sixteen bits a pixel")
    reasons = {
        "b_garbage.mp4": "unreadable video (",
        "c_truncated.mp4": "unreadable video (",
        "d_short.webm": "too few frames (5, --num-frames 9)",
        "e_no_caption.gif": "no caption file beside the video (e_no_caption.txt)",
        "f_empty_caption.mov": "caption file is empty (f_empty_caption.txt)",
        "g_latin1.mp4": "caption file is not UTF-8 text (g_latin1.txt)",
        "h_16bit.png": "I;16 pixels (only 8-bit images and videos are read)",
    }
    return folder, reasons


def _main(argv, capsys):
    try:
        code = prepare_tool().main([*argv, "--no-progress"])
    except SystemExit as e:  # an error exits
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_items_are_skipped_with_their_reason(pipeline, bad_videos, tmp_path, capsys):
    folder, reasons = bad_videos
    out = tmp_path / "out"
    code, stdout, _ = _main(["--pipeline", str(pipeline), "--videos", str(folder), "--output", str(out), *SIZE],
                            capsys)
    assert code == 3, stdout
    assert "wrote 1 of 8 samples" in stdout and "7 items skipped" in stdout
    records = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    got = {record["source"].rsplit("/", 1)[1]: record for record in records}
    assert sorted(got) == sorted(reasons)
    for name, reason in reasons.items():
        assert got[name]["action"] == "skipped" and got[name]["reason"].startswith(reason), got[name]
    assert "Traceback" not in got["b_garbage.mp4"]["reason"] and "\n" not in got["b_garbage.mp4"]["reason"]
    data = LatentShardDataset(out)
    assert len(data) == 1 and data[0]["prompt"] == "a red fox runs" and data[0]["key"] == "00000000"


def test_strict_stops_at_the_first_skip(pipeline, bad_videos, tmp_path, capsys):
    folder, _ = bad_videos
    code, _, err = _main(["--pipeline", str(pipeline), "--videos", str(folder), "--output", str(tmp_path / "o"),
                          *SIZE, "--strict"], capsys)
    assert code == 1
    assert err.startswith("prepare_data: error: --strict: ") and "b_garbage.mp4: unreadable video (" in err
    assert err.count("\n") == 1
    assert not list((tmp_path / "o").glob("*.tar"))


def test_manifest_items(pipeline, tmp_path, capsys):
    frames = random_frames(9, 16, 16, seed=2)
    (tmp_path / "clips").mkdir()
    write_video(tmp_path / "clips" / "one.mp4", frames)
    lines = [{"video": "clips/one.mp4", "caption": "a child flies a kite"},
             {"video": "clips/missing.mp4", "caption": "gone"},
             {"video": "clips/one.mp4", "caption": "   "}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    code, stdout, _ = _main(["--pipeline", str(pipeline), "--manifest", str(tmp_path / "m.jsonl"),
                             "--output", str(tmp_path / "o"), *SIZE], capsys)
    assert code == 3 and "wrote 1 of 3 samples" in stdout
    records = [json.loads(line) for line in (tmp_path / "o" / "skipped.jsonl").read_text().splitlines()]
    assert [(r["key"], r["reason"]) for r in records] == [("00000001", "video file not found"),
                                                          ("00000002", "empty caption")]


def _listed_video(tmp_path):
    """A folder whose one video is listed (the size checks come after the listing)."""
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"never read")
    return str(tmp_path / "clips")


def _pipeline_without(pipeline, tmp_path, component):
    copy = tmp_path / "pipeline"
    shutil.copytree(pipeline, copy)
    shutil.rmtree(copy / component)
    return copy


@pytest.mark.parametrize("make_argv, message", [
    (lambda p, t: ["--pipeline", str(t / "nope"), "--videos", str(t), "--output", str(t / "o"), *SIZE],
     "pipeline folder .*/nope does not exist"),
    (lambda p, t: ["--pipeline", str(_pipeline_without(p, t, "text_encoder")), "--videos", str(t),
                   "--output", str(t / "o"), *SIZE], "has no text_encoder/ folder"),
    (lambda p, t: ["--pipeline", str(p / "transformer"), "--videos", str(t), "--output", str(t / "o"), *SIZE],
     "is the folder of one model .WanTransformer3DModel., not a pipeline"),
    (lambda p, t: ["--pipeline", str(p), "--videos", str(t / "nope"), "--output", str(t / "o"), *SIZE],
     "--videos/--images .*/nope is not a folder"),
    (lambda p, t: ["--pipeline", str(p), "--images", str(t / "nope"), "--output", str(t / "o"), *SIZE],
     "--videos/--images .*/nope is not a folder"),
    (lambda p, t: ["--pipeline", str(p), "--videos", str(t), "--output", str(t / "o"), *SIZE],
     r"--videos/--images .* holds no videos or images \(.mp4, .webm, .mov, .gif, .png, .jpg, .jpeg\)"),
    (lambda p, t: ["--pipeline", str(p), "--manifest", str(t / "m.jsonl"), "--output", str(t / "o"), *SIZE],
     "--manifest .*m.jsonl cannot be read"),
    (lambda p, t: ["--pipeline", str(p), "--prompts", str(t / "p.txt"), "--teacher", str(p), "--output",
                   str(t / "o"), *SIZE], "--prompts .*p.txt cannot be read"),
    (lambda p, t: ["--pipeline", str(p), "--videos", _listed_video(t), "--output", str(t / "o"), "--height", "16",
                   "--width", "16", "--num-frames", "10"],
     r"--num-frames 10 must be 1 \+ a multiple of the VAE's temporal stride 4"),
    (lambda p, t: ["--pipeline", str(p), "--videos", _listed_video(t), "--output", str(t / "o"), "--height", "24",
                   "--width", "16", "--num-frames", "9"],
     r"--height 24 is not a positive multiple of 16 \(VAE stride 8 x patch size 2\)"),
    (lambda p, t: ["--pipeline", str(p), "--videos", str(t), "--output", str(t / "o"), "--num-frames", "9"],
     "--height --width needed to prepare shards"),
    (lambda p, t: ["--pipeline", str(p), "--prompts", str(t), "--output", str(t / "o"), *SIZE],
     "--teacher needed to prepare shards"),
    (lambda p, t: ["--pipeline", str(p), "--videos", str(t), "--teacher", str(p), "--output", str(t / "o"), *SIZE],
     "--teacher samples the prompts of --prompts"),
    (lambda p, t: ["--pipeline", str(p), "--videos", str(t), "--output", str(t / "o"), *SIZE,
                   "--samples-per-shard", "0"], "--samples-per-shard must be positive, got 0"),
    (lambda p, t: ["--pipeline", str(p), "--output", str(t / "negative.bin")],
     "pass --videos, --manifest or --prompts to prepare shards, or --output FILE.pt"),
], ids=["no-pipeline", "no-text-encoder", "model-folder", "no-videos-folder", "no-images-folder", "empty-videos-folder",
        "no-manifest", "no-prompts", "frames", "height", "no-size", "no-teacher", "teacher-without-prompts",
        "samples-per-shard", "negative-not-pt"])
def test_bad_commands_stop_with_one_line(pipeline, tmp_path, capsys, make_argv, message):
    code, _, err = _main(make_argv(pipeline, tmp_path), capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("prepare_data: error: "), err
    assert re.search(message, err), err


def test_bad_manifest_line_is_named(pipeline, tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text('{"video": "a.mp4", "caption": "ok"}\n{"video": "b.mp4"}\n')
    code, _, err = _main(["--pipeline", str(pipeline), "--manifest", str(tmp_path / "m.jsonl"),
                          "--output", str(tmp_path / "o"), *SIZE], capsys)
    assert code == 1 and "m.jsonl line 2 is not a JSON object with string 'video' and 'caption' fields" in err


def test_output_prepared_with_other_settings_or_by_another_tool(pipeline, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    captioned_video(folder, "a.mp4", random_frames(9, 32, 32, seed=3), "a red fox")
    argv = ["--pipeline", str(pipeline), "--videos", str(folder), "--output", str(tmp_path / "o")]
    assert _main([*argv, *SIZE], capsys)[0] == 0
    assert _main([*argv, *SIZE], capsys)[0] == 0  # its own folder: resumed, nothing left to do
    code, _, err = _main([*argv, "--height", "32", "--width", "16", "--num-frames", "9"], capsys)
    assert code == 1 and "holds data prepared from other settings (height: 16, now 32)" in err
    captioned_video(folder, "b.mp4", random_frames(9, 16, 16, seed=4), "a second clip")
    code, _, err = _main([*argv, *SIZE], capsys)
    assert code == 1 and "holds data prepared from other videos, captions or prompts; pass a new --output" in err


@pytest.mark.parametrize("files, folders", [(["data-0.tar"], []), (["train.jsonl"], ["iter_0000001"])],
                         ids=["shards", "training-run"])
def test_a_folder_this_tool_did_not_write_is_left_alone(pipeline, tmp_path, capsys, files, folders):
    output = tmp_path / "foreign"
    output.mkdir()
    for name in folders:
        (output / name).mkdir()
    for name in files:
        (output / name).write_bytes(b"kept")
    (tmp_path / "p.txt").write_text("a red fox\n")
    code, _, err = _main(["--pipeline", str(pipeline), "--prompts", str(tmp_path / "p.txt"), "--teacher",
                          str(pipeline), "--output", str(output), *SIZE], capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert f"{output} holds files this tool did not write (it has no prepare.json); pass a new or empty --output" in err
    assert sorted(p.name for p in output.iterdir()) == sorted(files + folders)


def test_an_output_that_cannot_be_a_folder_names_the_flag(pipeline, tmp_path, capsys):
    (tmp_path / "file").write_text("kept")
    (tmp_path / "p.txt").write_text("a red fox\n")
    argv = ["--pipeline", str(pipeline), "--prompts", str(tmp_path / "p.txt"), "--teacher", str(pipeline), *SIZE]
    for output, message in ((tmp_path / "file", f"--output {tmp_path / 'file'} is a file; shards are written into "
                                                 "a folder"),
                            (tmp_path / "file" / "o", f"--output {tmp_path / 'file' / 'o'} cannot be written (")):
        code, _, err = _main([*argv, "--output", str(output)], capsys)
        assert code == 1 and err.count("\n") == 1 and message in err, err
    assert (tmp_path / "file").read_text() == "kept" and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("teacher", ["empty", "file"])
def test_a_teacher_that_holds_no_model_stops_before_any_output(pipeline, tmp_path, capsys, teacher):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a model")
    (tmp_path / "p.txt").write_text("a red fox\n")
    code, _, err = _main(["--pipeline", str(pipeline), "--prompts", str(tmp_path / "p.txt"), "--teacher",
                          str(tmp_path / teacher), "--output", str(tmp_path / "o"), *SIZE], capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"prepare_data: error: --teacher: {tmp_path / teacher} is neither a Megatron")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag, value, expected", [
    ("--guidance-scale", "nan", "a number > 0"),
    ("--guidance-scale", "inf", "a number > 0"),
    ("--shift", "0", "a number > 0"),
    ("--shift", "-1", "a number > 0"),
    ("--seed", "99999999999999999999", "an integer <= 9223372036854775807 (2**63 - 1)"),
])
def test_a_value_no_sampler_takes_is_refused_by_the_parser(pipeline, tmp_path, capsys, flag, value, expected):
    (tmp_path / "p.txt").write_text("a red fox\n")
    code, _, err = _main(["--pipeline", str(pipeline), "--prompts", str(tmp_path / "p.txt"), "--teacher",
                          str(pipeline), "--output", str(tmp_path / "o"), *SIZE, flag, value], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"argument {flag}: expected {expected}, got '{value}' (see --help)" in err
    assert not (tmp_path / "o").exists()


def test_the_negative_prompt_alone_replaces_only_its_own_file(pipeline, tmp_path, capsys):
    import torch

    output = tmp_path / "negative.pt"
    argv = ["--pipeline", str(pipeline), "--negative-prompt", "blurry", "--output", str(output)]
    output.write_bytes(b"not a tensor")
    for make in (lambda: None, lambda: torch.save({"model": torch.zeros(2, 2)}, output),  # a checkpoint-like dict
                 lambda: torch.save(torch.randn(4, 3, 2, 2), output)):  # a tensor, but a latent, not [L, D]
        make()
        before = output.read_bytes()
        code, _, err = _main(argv, capsys)
        assert code == 1 and err.count("\n") == 1, err
        assert f"--output {output} exists and is not a negative-prompt embedding (one tensor [L, D])" in err
        assert output.read_bytes() == before
    output.unlink()
    assert _main(argv, capsys)[0] == 0
    first = torch.load(output, weights_only=True)
    assert _main([*argv[:-3], "static", "--output", str(output)], capsys)[0] == 0  # a re-run rewrites its own file
    assert first.dim() == 2 and not torch.equal(torch.load(output, weights_only=True), first)


def test_parallel_sizes_that_do_not_fit(pipeline, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red fox\n")
    code, _, err = _main(["--pipeline", str(pipeline), "--prompts", str(tmp_path / "p.txt"), "--teacher",
                          str(pipeline), "--output", str(tmp_path / "o"), *SIZE, "--tensor-model-parallel-size",
                          "2"], capsys)
    assert code == 1 and "world size 1 is not divisible by tensor (2)" in err


def test_error_line_on_the_command_line(pipeline, tmp_path, capsys):
    argv = [sys.executable, str(ROOT / "tools" / "prepare_data.py"), "--pipeline", str(pipeline), "--videos",
            str(tmp_path), "--output", str(tmp_path / "o"), *SIZE]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"prepare_data: error: --videos/--images {tmp_path} holds no videos or "
                                                  "images (.mp4, .webm, .mov, .gif, .png, .jpg, .jpeg)"]
    code, _, err = _main([*argv[2:], "--debug"], capsys)
    assert code == 1 and "Traceback" in err and "PrepareError" in err and err.endswith(".png, .jpg, .jpeg)\n")
    misspelt = subprocess.run([*argv, "--num-frame", "9"], capture_output=True, text=True, timeout=120)
    assert misspelt.returncode == 2 and misspelt.stderr.count("\n") == 1
    assert "unrecognized arguments: --num-frame 9 (see --help)" in misspelt.stderr


def test_a_resume_with_other_teacher_settings_is_refused(pipeline, tmp_path, capsys):
    """Teacher samples depend on every sampler flag: the folder records them, and a re-run that changes
    one is refused by name instead of mixing two kinds of samples. The run also keeps --dtype bfloat16."""
    import torch

    (tmp_path / "p.txt").write_text("a red fox\n")
    argv = ["--pipeline", str(pipeline), "--prompts", str(tmp_path / "p.txt"), "--teacher", str(pipeline),
            "--output", str(tmp_path / "o"), *SIZE, "--dtype", "bfloat16"]
    assert _main([*argv, "--steps", "1", "--seed", "5"], capsys)[0] == 0
    assert LatentShardDataset(tmp_path / "o")[0]["embed"].dtype == torch.bfloat16
    assert torch.load(tmp_path / "o" / "negative_prompt.pt").dtype == torch.bfloat16
    for change, named in ((["--seed", "6"], "seed: 5, now 6"), (["--steps", "2"], "steps: 1, now 2"),
                          (["--sampler", "euler"], "sampler: 'unipc', now 'euler'"),
                          (["--shift", "4"], "shift: 3.0, now 4.0"),
                          (["--guidance-scale", "4"], "guidance_scale: 5.0, now 4.0")):
        flags = {"--steps": "1", "--seed": "5", **dict([change])}
        code, _, err = _main([*argv, *[x for kv in flags.items() for x in kv]], capsys)
        assert code == 1 and f"holds data prepared from other settings ({named})" in err, err
