"""Real small video files (mp4, webm, mov through imageio-ffmpeg; gif through Pillow) for the data tests."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CODECS = {".mp4": "libx264", ".mov": "libx264", ".webm": "libvpx-vp9"}


def random_frames(count, height, width, seed):
    """uint8 frames [count, height, width, 3]: a smooth moving pattern plus noise (codecs keep it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi, size=3)
    frames = [np.stack([127 + 100 * np.sin(0.3 * x + 0.2 * y + 0.5 * t + p) for p in phase], -1)
              for t in range(count)]
    noise = rng.normal(0, 8, size=(count, height, width, 3))
    return np.clip(np.stack(frames) + noise, 0, 255).astype(np.uint8)


def write_video(path, frames, fps=16):
    """Write uint8 frames [F, H, W, 3] to ``path``; the format follows the extension."""
    path = Path(path)
    if path.suffix == ".gif":
        import imageio.v3 as iio

        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
        return path
    import imageio_ffmpeg

    extra = {"pix_fmt_out": "yuv420p"} if CODECS[path.suffix] == "libx264" else {}
    writer = imageio_ffmpeg.write_frames(str(path), (frames.shape[2], frames.shape[1]), fps=fps,
                                         codec=CODECS[path.suffix], macro_block_size=1, **extra)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def captioned_video(folder, name, frames, caption):
    """``folder/name`` with its caption in the .txt beside it (no caption file when ``caption`` is None)."""
    path = write_video(Path(folder) / name, frames)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def prepare_tool():
    """tools/prepare_data.py as a module (``main(argv)`` returns the exit status)."""
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "tools" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
