"""The files of one finished video and their metadata (DESIGN section 5), written metadata last."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tempfile
from pathlib import Path

import PIL.Image

from . import ALGORITHM_VERSION, __version__
from .video import contact_sheet, encode_mp4

METADATA = "metadata.json"


def png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mp4_bytes(frames: list[PIL.Image.Image], fps: int, crf: int = 18) -> bytes:
    """The frames encoded as an MP4 file, in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        encode_mp4(frames, path, fps=fps, crf=crf)
        return path.read_bytes()


def image_files(source: PIL.Image.Image, keyframes: list[PIL.Image.Image]) -> dict[str, bytes]:
    """source.png, keyframes/NNN.png and preview.png (contact sheet of source + key frames)."""
    files = {"source.png": png_bytes(source)}
    for index, keyframe in enumerate(keyframes):
        files[f"keyframes/{index:03d}.png"] = png_bytes(keyframe)
    files["preview.png"] = png_bytes(contact_sheet([source, *keyframes]))
    return files


def video_metadata(
    request,
    *,
    inputs: dict,
    caption: str,
    caption_source: str,
    captioner: dict | None,
    model: dict,
    device: str,
    dtype: str,
    size: int,
    frame_count: int,
    keyframe_count: int,
    fit: dict | None,
    timings: dict[str, float],
    truncated_prompts: list[str],
    param_sources: dict[str, str] | None = None,
) -> dict:
    """metadata.json of one video (DESIGN section 5); content hashes are added when it is written."""
    params = request.params
    return {
        "video_id": request.video_id,
        "version": __version__,
        "algorithm_version": ALGORITHM_VERSION,
        "mode": "synthetic" if request.synthetic else "real",
        "input": inputs,
        "caption": caption,
        "caption_source": caption_source,
        "prompts": list(request.prompts),
        "seed": params.seed,
        "params": params.to_dict(),
        "params_from": param_sources or {},  # model-specific values: "given", or whose default
        "xa_guidance_used": params.guidance_for(request.synthetic),
        "model": {**model, "captioner": captioner},
        "device": device,
        "dtype": dtype,
        "size": size,
        "frame_count": frame_count,
        "keyframe_count": keyframe_count,
        "segments": len(request.prompts),
        "fps": params.fps,
        "fit": fit,
        "timings": {name: round(seconds, 4) for name, seconds in timings.items()},
        "notes": [
            f"prompt truncated to the text encoder's 77 tokens: {text!r}" for text in truncated_prompts
        ],
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def add_candidates(metadata: dict, candidates: list[dict]) -> None:
    """Best of N in metadata.json: every candidate's record, and the chosen one's values as used."""
    metadata["candidates"] = candidates
    chosen = next(c["varied"] for c in candidates if c["chosen"])
    if "xa_guidance" in chosen:
        metadata["xa_guidance_used"] = chosen["xa_guidance"]
    if "seed" in chosen:
        metadata["seed_used"] = chosen["seed"]


def metadata_bytes(metadata: dict, files: dict[str, bytes]) -> bytes:
    """The metadata with a content hash of every other file of the video."""
    metadata = {**metadata, "hashes": {name: sha256(data) for name, data in sorted(files.items())}}
    return json.dumps(metadata, indent=2, ensure_ascii=False).encode("utf-8")
