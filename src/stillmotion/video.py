"""MP4 encoding (ffmpeg-python driving the ffmpeg binary that imageio-ffmpeg ships) and contact sheets."""

from __future__ import annotations

import math
from pathlib import Path

import ffmpeg
import imageio_ffmpeg
import numpy as np
import PIL.Image


class EncodeError(RuntimeError):
    """ffmpeg failed to encode a video."""


def encode_mp4(frames: list[PIL.Image.Image], path: str | Path, fps: int, crf: int = 18) -> None:
    """Write RGB frames as H.264 yuv420p MP4 with +faststart (moov atom first, for streaming)."""
    width, height = frames[0].size
    if width % 2 or height % 2:
        raise EncodeError(f"yuv420p needs even dimensions, got {width}x{height}")
    raw = np.stack([np.asarray(frame.convert("RGB"), dtype=np.uint8) for frame in frames]).tobytes()
    stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
    stream = ffmpeg.output(
        stream, str(path), vcodec="libx264", pix_fmt="yuv420p", crf=crf, r=fps, movflags="+faststart"
    )
    try:
        ffmpeg.run(stream, cmd=imageio_ffmpeg.get_ffmpeg_exe(), input=raw, overwrite_output=True, quiet=True)
    except ffmpeg.Error as error:
        tail = (error.stderr or b"").decode(errors="replace").strip().splitlines()[-3:]
        raise EncodeError("ffmpeg failed: " + " | ".join(tail)) from None


def contact_sheet(images: list[PIL.Image.Image], columns: int = 8, gap: int = 2) -> PIL.Image.Image:
    """A grid of equally sized images on white, `columns` wide."""
    width, height = images[0].size
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    sheet = PIL.Image.new("RGB", (columns * (width + gap) - gap, rows * (height + gap) - gap), "white")
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        sheet.paste(image.convert("RGB"), (column * (width + gap), row * (height + gap)))
    return sheet
