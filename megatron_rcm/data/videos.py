"""Read the first frames of a video file as a [3, F, H, W] tensor in [-1, 1], resized and centre-cropped.

Any format imageio reads: mp4, webm and mov through imageio-ffmpeg, gif through Pillow. An image
(png, jpg) is a video of one frame (F = 1), converted to RGB by Pillow from whatever 8-bit mode it
is stored in (grey with alpha, palette, CMYK): its array alone cannot say which mode that was.
Frames are taken from the start at the file's own rate (no temporal resampling); a clip with
fewer frames than asked for is refused (``VideoReadError``), never padded; so is a file whose
pixels are not 8-bit.
"""

import contextlib
import os

import numpy as np
import torch
import torch.nn.functional as nn_functional

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Pillow's modes of 8 bits (or fewer) per channel; the others (I;16, I, F) hold wider pixels
_EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


class VideoReadError(ValueError):
    """A video that cannot give the frames asked for: unreadable, or too short."""


def _rgb(frame) -> torch.Tensor:
    if frame.dtype.name != "uint8":
        raise VideoReadError(f"{frame.dtype.name} pixels (only 8-bit images and videos are read)")
    frame = torch.from_numpy(frame)
    if frame.dim() == 2:  # greyscale (Pillow reads a grey GIF in mode L)
        frame = frame.unsqueeze(-1).expand(-1, -1, 3)
    return frame[..., :3]  # drops an alpha channel


def _image(path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in _EIGHT_BIT_MODES:
            raise VideoReadError(f"{image.mode} pixels (only 8-bit images and videos are read)")
        return torch.from_numpy(np.array(image.convert("RGB")))


def _first_frames(path, num_frames: int) -> torch.Tensor:
    try:
        if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
            frames = [_image(path)]
        else:
            frames = _video_frames(path, num_frames)
    except VideoReadError:
        raise
    except Exception as e:  # imageio, Pillow and their plugins raise many types; the first line says why
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VideoReadError(f"unreadable video ({reason})") from None
    if len(frames) < num_frames:
        raise VideoReadError(f"too few frames ({len(frames)}, --num-frames {num_frames})")
    return torch.stack(frames)  # [F, H, W, 3] uint8


def _video_frames(path, num_frames: int) -> list:
    """Up to ``num_frames`` RGB frames; a file cut short mid-stream gives the frames before the damage."""
    import imageio.v3 as iio

    frames = []
    try:
        with contextlib.closing(iio.imiter(path)) as reader:
            for frame in reader:
                frames.append(_rgb(frame))
                if len(frames) == num_frames:
                    break
    except VideoReadError:
        raise
    except Exception:
        if not frames:
            raise
    return frames


def resize_and_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 frames [F, H0, W0, 3] -> float [F, 3, height, width] in [0, 255]: scaled (bilinear,
    antialiased) so that the frame covers height x width, then centre-cropped. Frames already at
    height x width are returned unchanged."""
    video = frames.permute(0, 3, 1, 2).float()
    h0, w0 = video.shape[-2:]
    if (h0, w0) == (height, width):
        return video
    scale = max(height / h0, width / w0)
    size = (max(height, round(h0 * scale)), max(width, round(w0 * scale)))
    if size != (h0, w0):
        video = nn_functional.interpolate(video, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return video[..., top:top + height, left:left + width]


def read_video(path, num_frames: int, height: int, width: int) -> torch.Tensor:
    """The first ``num_frames`` frames of ``path`` as float32 [3, F, height, width] in [-1, 1]."""
    video = resize_and_crop(_first_frames(str(path), num_frames), height, width)
    return (video / 255 * 2 - 1).permute(1, 0, 2, 3).contiguous()
