"""Turn videos or images with captions, or prompts sampled by a teacher, into training shards on any number of ranks.

Items (one video, image or prompt each; an image is a video of one frame) are numbered in a fixed order: videos by relative path, manifest
and prompt lines in file order. Sample ``i`` has the key ``%08d`` and lives in shard
``i // samples_per_shard`` (``shard-000000.tar``, ...), so names and contents do not depend on how
many ranks prepare them. A shard is complete once its record ``.progress/shard-NNNNNN.json``
exists (written after the tar, both atomically); a re-run of the same command does only the
shards without one. An item that cannot become a sample (unreadable or short video, missing or
empty caption) is left out of its shard and recorded with the reason; a caption longer than the
text encoder's length is encoded truncated and recorded too.
"""

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..atomic_output import atomic_write_bytes
from .shard_writer import write_shard
from .videos import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoReadError, read_video

PROGRESS_DIR = ".progress"
SETTINGS_FILE = "prepare.json"
REPORT_FILE = "skipped.jsonl"
NEGATIVE_FILE = "negative_prompt.pt"


class PrepareError(ValueError):
    """A preparation that cannot run as asked: bad flags, input lists or output folder."""


class SkipSample(Exception):
    """This item cannot become a sample; the message says why."""


@dataclass(frozen=True)
class Item:
    """One future sample: a video and its caption, or a prompt for the teacher."""

    index: int
    """Position in the item order; the sample's key and shard follow from it."""

    source: str
    """The video's path, or ``FILE:LINE`` of a prompt."""

    caption: Optional[str]
    """The caption or prompt; None when there is none (``problem`` says why)."""

    problem: Optional[str] = None
    """Why the item cannot become a sample, found while listing it."""


def sample_key(index: int) -> str:
    return f"{index:08d}"


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.tar"


def _record_path(output, shard: int) -> Path:
    """The completion record of a shard."""
    return Path(output) / PROGRESS_DIR / f"shard-{shard:06d}.json"


def num_shards(num_items: int, samples_per_shard: int) -> int:
    return -(-num_items // samples_per_shard)


def shard_items(items, shard: int, samples_per_shard: int) -> list:
    """The items of shard ``shard``."""
    return items[shard * samples_per_shard:(shard + 1) * samples_per_shard]


def _caption_beside(video: Path):
    path = video.with_suffix(".txt")
    if not path.is_file():
        return None, f"no caption file beside the video ({path.name})"
    try:
        caption = path.read_text(encoding="utf-8-sig").strip()  # -sig: a byte-order mark is no text
    except UnicodeDecodeError:
        return None, f"caption file is not UTF-8 text ({path.name})"
    return (caption, None) if caption else (None, f"caption file is empty ({path.name})")


def list_videos(folder) -> list:
    """Items for every video and image under ``folder`` (by relative path), each captioned by
    ``NAME.txt`` beside it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrepareError(f"--videos/--images {folder} is not a folder")
    extensions = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    if not videos:
        raise PrepareError(f"--videos/--images {folder} holds no videos or images ({', '.join(extensions)})")
    return [Item(i, str(video), *_caption_beside(video)) for i, video in enumerate(videos)]


def list_manifest(path) -> list:
    """Items of a JSONL manifest, one ``{"video": path, "caption": text}`` per line (paths relative
    to the manifest's folder); blank lines are ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte-order mark is not text
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"--manifest {path} cannot be read ({e})") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not (isinstance(entry, dict) and isinstance(entry.get("video"), str)
                and isinstance(entry.get("caption"), str)):
            raise PrepareError(f"--manifest {path} line {number} is not a JSON object with string "
                               "'video' and 'caption' fields")
        video = path.parent / entry["video"]
        caption = entry["caption"].strip()
        problem = None if video.is_file() else "video file not found"
        problem = problem or (None if caption else "empty caption")
        items.append(Item(len(items), str(video), caption or None, problem))
    if not items:
        raise PrepareError(f"--manifest {path} lists no videos")
    return items


def list_prompts(path) -> list:
    """Items of a prompt file, one prompt per non-blank line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"--prompts {path} cannot be read ({e})") from None
    items = [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]
    if not items:
        raise PrepareError(f"--prompts {path} holds no prompts")
    return [Item(i, f"{path}:{number}", prompt) for i, (number, prompt) in enumerate(items)]


def items_digest(items) -> str:
    """A hash of the item list: a resumed run must prepare the same items."""
    text = json.dumps([(item.source, item.caption, item.problem) for item in items])
    return hashlib.sha256(text.encode()).hexdigest()


def _recorded_settings(path) -> dict:
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PrepareError(f"{path} is damaged ({e}); pass a new --output") from None
    if not isinstance(previous, dict):
        raise PrepareError(f"{path} is damaged (not a JSON object); pass a new --output")
    return previous


def check_settings(output, settings: dict) -> None:
    """Record ``settings`` in a new (or empty) output folder, or check that an existing one was prepared
    with them. Any other folder is refused: shards would mix with its files (a training run's, say)."""
    output = Path(output)
    path = output / SETTINGS_FILE
    if output.exists() and not output.is_dir():
        raise PrepareError(f"--output {output} is a file; shards are written into a folder")
    if path.is_file():
        previous = _recorded_settings(path)
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            first = changed[0]
            what = ("other videos, captions or prompts" if first == "items" else
                    f"other settings ({first}: {previous.get(first)!r}, now {settings.get(first)!r})")
            raise PrepareError(f"{output} holds data prepared from {what}; pass a new --output, "
                               "or the same inputs and settings to resume")
    elif output.is_dir() and any(output.iterdir()):
        raise PrepareError(f"{output} holds files this tool did not write (it has no {SETTINGS_FILE}); pass a new "
                           "or empty --output")
    else:
        atomic_write_bytes(path, json.dumps(settings, indent=1, sort_keys=True).encode())


def pending_shards(output, num_items: int, samples_per_shard: int) -> list:
    """Shards without a completion record, in order."""
    return [s for s in range(num_shards(num_items, samples_per_shard)) if not _record_path(output, s).is_file()]


def encode_caption(text_encoder, caption: str):
    """The caption's embedding [L, D] and a record if the encoder's length truncated it."""
    count = text_encoder.num_tokens([caption])[0]
    notes = []
    if count > text_encoder.max_length:
        notes.append({"action": "truncated", "reason": f"caption has {count} tokens; encoded its first "
                      f"{text_encoder.max_length}"})
    return text_encoder.encode([caption])[0].cpu(), notes


class VideoSamples:
    """Item -> (latent [C, T, h, w], embedding [L, D], records): a video read at ``size``
    (num_frames, height, width) and VAE-encoded, its caption text-encoded."""

    def __init__(self, vae, text_encoder, size):
        self.vae, self.text_encoder, self.size = vae, text_encoder, size

    def __call__(self, item):
        try:
            video = read_video(item.source, *self.size)
        except VideoReadError as e:
            raise SkipSample(str(e)) from None
        embed, notes = encode_caption(self.text_encoder, item.caption)
        return self.vae.encode(video.unsqueeze(0))[0].cpu(), embed, notes


class TeacherSamples:
    """Item -> (latent [C, T, h, w], embedding [L, D], records): the prompt text-encoded, then
    sampled by the teacher (``megatron_rcm.generation.sample`` in teacher mode) from the noise of
    ``draw_noise([1, *latent_shape], 1, seed + item.index)``."""

    def __init__(self, model, text_encoder, config, latent_shape, negative, seed: int):
        self.model, self.text_encoder, self.config = model, text_encoder, config
        self.latent_shape, self.negative, self.seed = tuple(latent_shape), negative, seed

    def __call__(self, item):
        from ..generation import draw_noise, sample

        embed, notes = encode_caption(self.text_encoder, item.caption)
        noise = draw_noise((1, *self.latent_shape), 1, self.seed + item.index)
        latent = sample(self.model, self.config, noise, embed.unsqueeze(0), self.negative)
        return latent[0].cpu(), embed, notes


def _record(item, entry):
    return {"key": sample_key(item.index), "source": item.source, **entry}


def prepare_shard(output, shard: int, items, make_sample: Callable, strict: bool, write: bool = True,
                  tick: Callable = lambda: None) -> None:
    """Make the samples of ``items`` (shard ``shard``'s), write the shard and its completion record.

    ``write=False`` computes without writing (the other ranks of a model-parallel group)."""
    samples, records = [], []
    for item in items:
        try:
            if item.problem:
                raise SkipSample(item.problem)
            latent, embed, notes = make_sample(item)
        except SkipSample as e:
            if strict:
                raise PrepareError(f"--strict: {item.source}: {e}") from None
            records.append(_record(item, {"action": "skipped", "reason": str(e)}))
            continue
        finally:
            tick()
        samples.append((sample_key(item.index), latent, embed, item.caption))
        records.extend(_record(item, note) for note in notes)
    if not write:
        return
    output = Path(output)
    for stale in output.glob(f".{shard_name(shard)}.tmp-*"):  # left by a killed run
        stale.unlink()
    if samples:
        write_shard(output / shard_name(shard), samples)
    record = {"written": len(samples), "records": records}
    atomic_write_bytes(_record_path(output, shard), json.dumps(record).encode())


def summarize(output, num_items: int, samples_per_shard: int) -> dict:
    """Collect the shards' records into ``skipped.jsonl`` (written atomically); returns the counts."""
    output = Path(output)
    written, records = 0, []
    for shard in range(num_shards(num_items, samples_per_shard)):
        record = json.loads(_record_path(output, shard).read_text())
        written += record["written"]
        records.extend(record["records"])
    atomic_write_bytes(output / REPORT_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                       .encode())
    skipped = [r for r in records if r["action"] == "skipped"]
    return {"written": written, "skipped": len(skipped),
            "truncated": sum(r["action"] == "truncated" for r in records),
            "reasons": Counter(r["reason"].split(" (")[0] for r in skipped)}
