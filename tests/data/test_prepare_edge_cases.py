"""Edges of preparing shards that the end-to-end runs do not reach: greyscale images, a GIF damaged past
the frames asked for, upper-case extensions and the listing order, the truncation rule at exactly the
encoder's length, a shard whose items are all skipped, a caption edited between runs, and the
permissions and clean-up of the files the preparation writes."""

import gc
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_rcm.atomic_output import atomic_write_bytes
from megatron_rcm.data.latent_shards import LatentShardDataset
from megatron_rcm.data.prepare import (Item, PrepareError, check_settings, encode_caption, items_digest,
                                       list_videos, prepare_shard, summarize)
from megatron_rcm.data.sampler import ResumableDistributedSampler
from megatron_rcm.data.shard_writer import write_shard
from megatron_rcm.data.videos import VideoReadError, read_video

from .video_files import random_frames, write_video


def _seed():
    return int(torch.randint(1 << 30, ()))


def test_a_greyscale_image_reads_as_its_grey_level_in_every_channel(tmp_path):
    """A mode-L PNG (imageio gives [H, W]) is what Pillow's RGB conversion of it gives, not a skipped item."""
    Image.fromarray(random_frames(1, 16, 24, seed=_seed())[0, :, :, 0]).save(tmp_path / "grey.png")
    rgb = torch.from_numpy(np.array(Image.open(tmp_path / "grey.png").convert("RGB")))
    assert torch.equal(read_video(tmp_path / "grey.png", 1, 16, 24)[:, 0], (rgb.float() / 255 * 2 - 1).permute(2, 0, 1))


def test_a_gif_damaged_after_the_frames_asked_for_still_gives_them(tmp_path):
    """Pillow raises part-way through a truncated GIF: the frames decoded before the damage count."""
    whole = write_video(tmp_path / "whole.gif", random_frames(30, 16, 16, seed=_seed()))
    data = whole.read_bytes()
    (tmp_path / "cut.gif").write_bytes(data[:len(data) // 2])
    assert torch.equal(read_video(tmp_path / "cut.gif", 9, 16, 16), read_video(whole, 9, 16, 16))
    with pytest.raises(VideoReadError, match=r"too few frames \(\d+, --num-frames 30\)"):
        read_video(tmp_path / "cut.gif", 30, 16, 16)


def test_videos_are_listed_by_relative_path_whatever_the_case_of_their_extension(tmp_path):
    """Camera files are often NAME.MP4 or NAME.JPG; the item order (the keys) is the sorted paths,
    not the order the file system lists them in (files made here in a shuffled order)."""
    names = ["B.MP4", "a.JPG", "c.Png", "d.webm", "sub/e.GIF", "sub/f.jpeg", "z.mov"]
    (tmp_path / "sub").mkdir()
    for i in torch.randperm(len(names), generator=torch.Generator().manual_seed(_seed())).tolist():
        (tmp_path / names[i]).write_bytes(b"listed, never read")
        (tmp_path / names[i]).with_suffix(".txt").write_text(f"caption {i}")
    (tmp_path / "notes.MD").write_text("not a video")
    items = list_videos(tmp_path)
    assert [item.source for item in items] == [str(tmp_path / name) for name in sorted(names)]
    assert [item.index for item in items] == list(range(len(names)))
    assert [item.caption for item in items] == [f"caption {names.index(n)}" for n in sorted(names)]


def test_a_caption_of_exactly_the_encoders_length_is_not_reported_truncated(pipeline):
    """The tokenizer's own count (end-of-sequence token included) against ``max_length``: 16 tokens fit
    a 16-token encoder, 17 do not."""
    import transformers

    from megatron_rcm.encoders import load_text_encoder

    tokenizer = transformers.AutoTokenizer.from_pretrained(pipeline / "tokenizer")
    fits, too_long = "a " * 15, "a " * 16
    assert [len(tokenizer(p).input_ids) for p in (fits, too_long)] == [16, 17]
    encoder = load_text_encoder(pipeline, max_length=16)
    embed, notes = encode_caption(encoder, fits)
    assert embed.shape == (16, 24) and notes == []
    assert encode_caption(encoder, too_long)[1] == [
        {"action": "truncated", "reason": "caption has 17 tokens; encoded its first 16"}]


def _random_sample(item):
    g = torch.Generator().manual_seed(item.index)
    return torch.randn(4, 1, 2, 2, generator=g), torch.randn(3, 24, generator=g), []


def test_a_shard_whose_items_are_all_skipped_is_recorded_without_a_tar(tmp_path):
    items = [Item(0, "clips/gone.mp4", "a fox", "video file not found"), Item(1, "clips/b.mp4", "a cat")]
    for shard in range(2):
        prepare_shard(tmp_path, shard, items[shard:shard + 1], _random_sample, strict=False)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["shard-000001.tar"]
    assert json.loads((tmp_path / ".progress" / "shard-000000.json").read_text()) == {"written": 0, "records": [
        {"key": "00000000", "source": "clips/gone.mp4", "action": "skipped", "reason": "video file not found"}]}
    summary = summarize(tmp_path, 2, 1)
    assert (summary["written"], summary["skipped"], dict(summary["reasons"])) == (1, 1, {"video file not found": 1})
    data = LatentShardDataset(tmp_path)
    assert len(data) == 1 and data[0]["key"] == "00000001" and data[0]["prompt"] == "a cat"
    torch.testing.assert_close(data[0]["latent"], _random_sample(items[1])[0], rtol=0, atol=0)


def test_a_caption_edited_between_runs_is_refused_on_resume(tmp_path):
    """The same video with another caption would give other embeddings: not the data being resumed."""
    videos, output = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"listed, never read")
    (videos / "a.txt").write_text("a red fox runs")
    check_settings(output, {"height": 16, "items": items_digest(list_videos(videos))})
    check_settings(output, {"height": 16, "items": items_digest(list_videos(videos))})  # unchanged: resumes
    (videos / "a.txt").write_text("a grey wolf runs")
    with pytest.raises(PrepareError, match="holds data prepared from other videos, captions or prompts"):
        check_settings(output, {"height": 16, "items": items_digest(list_videos(videos))})


def test_written_files_get_the_umask_permissions_not_the_temporary_files_0600(tmp_path):
    """Shards and records are read by other users of a shared cluster: a new file's mode under the
    umask (0666 & ~027 = 0640), as ``open`` would make it, not mkstemp's 0600."""
    umask = os.umask(0o027)
    try:
        write_shard(tmp_path / "shard.tar", [("00000000", torch.randn(4, 1, 2, 2), torch.randn(3, 24), "a fox")])
        atomic_write_bytes(tmp_path / "record.json", b"{}")
    finally:
        os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"shard.tar": 0o640,
                                                                              "record.json": 0o640}


# an unfinished TarWriter left to the garbage collector flushes into a closed file: an error here
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    def samples():
        yield "00000000", torch.randn(4, 1, 2, 2), torch.randn(3, 24), "a fox"
        raise RuntimeError("the encoder failed")

    with pytest.raises(RuntimeError, match="the encoder failed"):
        write_shard(tmp_path / "shard.tar", samples())
    gc.collect()
    (tmp_path / "record.json").write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "record.json", "text, not bytes")
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"] and (tmp_path / "record.json").read_bytes() == b"old"


@pytest.mark.parametrize("args", [(0, 1, 0, 1), (5, 1, 2, 2), (5, 1, -1, 2), (5, 0, 0, 1)],
                         ids=["empty", "rank-is-size", "negative-rank", "no-micro-batch"])
def test_the_sampler_refuses_arguments_that_give_no_data_order(args):
    with pytest.raises(ValueError):
        ResumableDistributedSampler(*args)


def test_the_unshuffled_order_is_the_dataset_order_epoch_after_epoch():
    """shuffle=False: 7 samples, micro-batch 3 on one rank: 0 1 2 | 3 4 5 | 6 0 1 | 2 3 4 (hand-computed)."""
    batches = iter(ResumableDistributedSampler(7, 3, 0, 1, shuffle=False))
    assert [next(batches) for _ in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 0, 1], [2, 3, 4]]


def test_a_sample_that_is_a_view_is_written_alone_not_with_its_whole_batch(tmp_path):
    """A slice of a batch shares the batch's storage; torch.save of the view would write all of it."""
    import io
    import tarfile

    batch = torch.randn(16, 4, 1, 8, 8)
    write_shard(tmp_path / "shard.tar", [("00000000", batch[3], torch.randn(6, 24)[2:5], "a fox")])
    with tarfile.open(tmp_path / "shard.tar") as tar:
        saved = {m.name: torch.load(io.BytesIO(tar.extractfile(m).read())) for m in tar if m.name.endswith(".pt")}
    assert torch.equal(saved["00000000.latent.pt"], batch[3])
    assert {name: t.untyped_storage().nbytes() for name, t in saved.items()} == {
        "00000000.latent.pt": 4 * 8 * 8 * 4, "00000000.embed.pt": 3 * 24 * 4}


@pytest.mark.parametrize("name, mode", [("grey_alpha.png", "LA"), ("cmyk.jpg", "CMYK"), ("palette.png", "P")])
def test_an_image_in_another_8_bit_mode_reads_as_pillows_rgb_conversion(tmp_path, name, mode):
    """Grey with alpha arrives from imageio as [H, W, 2] and CMYK as [H, W, 4] (taking its first three
    channels as RGB gave wrong colours, and two channels crashed the VAE): the frame is Pillow's RGB."""
    rgb = Image.fromarray(random_frames(1, 16, 24, seed=_seed())[0])
    rgb.convert(mode).save(tmp_path / name)
    expected = torch.from_numpy(np.array(Image.open(tmp_path / name).convert("RGB"))).float() / 255 * 2 - 1
    assert torch.equal(read_video(tmp_path / name, 1, 16, 24)[:, 0], expected.permute(2, 0, 1))
