"""The files of one finished video and their metadata (DESIGN section 5), written metadata last."""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path

import PIL.Image

from .video import contact_sheet, encode_mp4

METADATA = "metadata.json"


def png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def video_files(
    frames: list[PIL.Image.Image], keyframes: list[PIL.Image.Image], fps: int, crf: int = 18
) -> dict[str, bytes]:
    """video.mp4, source.png, keyframes/NNN.png and preview.png of one video, as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        encode_mp4(frames, path, fps=fps, crf=crf)
        files = {"video.mp4": path.read_bytes()}
    files["source.png"] = png_bytes(frames[0])
    for index, keyframe in enumerate(keyframes):
        files[f"keyframes/{index:03d}.png"] = png_bytes(keyframe)
    files["preview.png"] = png_bytes(contact_sheet([frames[0], *keyframes]))
    return files


def metadata_bytes(metadata: dict, files: dict[str, bytes]) -> bytes:
    """The metadata with a content hash of every other file of the video."""
    metadata = {**metadata, "hashes": {name: sha256(data) for name, data in sorted(files.items())}}
    return json.dumps(metadata, indent=2, ensure_ascii=False).encode("utf-8")


def write_video_folder(fs, folder: str, files: dict[str, bytes], metadata: dict) -> None:
    """Write every file of a video into `folder` on an fsspec filesystem, metadata.json last."""
    fs.makedirs(f"{folder}/keyframes", exist_ok=True)
    for name, data in files.items():
        fs.pipe_file(f"{folder}/{name}", data)
    fs.pipe_file(f"{folder}/{METADATA}", metadata_bytes(metadata, files))
