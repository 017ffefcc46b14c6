"""What one video is made from, and reading its image: light imports (no torch), for the manifest code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import fsspec

from .limits import MAX_PROMPTS, MAX_TEXT_CHARS, MAX_VIDEO_FRAMES, MAX_VIDEO_KEYFRAMES
from .models.images import ImageError
from .models.params import MethodParams, ModelDefaults
from .storage import StorageError


@dataclass(frozen=True)
class VideoRequest:
    """What one video is made from: an image or a source prompt, a prompt schedule, parameters."""

    video_id: str
    prompts: tuple[str, ...]
    params: MethodParams
    image: str | None = None  # path or fsspec URL
    source_prompt: str | None = None  # synthetic mode
    caption: str | None = None  # overrides BLIP

    def __post_init__(self) -> None:
        if (self.image is None) == (self.source_prompt is None):
            raise ValueError("give exactly one of an image or a source prompt")
        if not self.prompts:
            raise ValueError("the prompt schedule needs at least one prompt")
        for number, prompt in enumerate(self.prompts, 1):
            if not prompt.strip():
                raise ValueError(f"prompt {number} of the schedule is blank")
        if self.caption is not None and self.synthetic:
            raise ValueError("--caption is for an image (real mode): a source prompt is its own caption")
        check_bounds(self)

    @property
    def synthetic(self) -> bool:
        return self.source_prompt is not None


def resolved(request: VideoRequest, defaults: ModelDefaults) -> tuple[VideoRequest, dict[str, str]]:
    """The request with the model's defaults filled in where nothing was given (MethodParams.resolve):
    the one resolved config its stage keys and fingerprint derive from."""
    params, sources = request.params.resolve(defaults, request.synthetic)
    return dataclasses.replace(request, params=params), sources


def check_bounds(request: VideoRequest) -> None:
    """A ValueError, naming the column first, for a request past a bound of stillmotion.limits."""
    if len(request.prompts) > MAX_PROMPTS:
        raise ValueError(f"prompts: at most {MAX_PROMPTS} prompts per video, got {len(request.prompts)}")
    for name, texts in (
        ("prompts", request.prompts),
        ("caption", [request.caption or ""]),
        ("source_prompt", [request.source_prompt or ""]),
    ):
        for text in texts:
            if len(text) > MAX_TEXT_CHARS:
                raise ValueError(f"{name}: longer than {MAX_TEXT_CHARS} characters ({len(text)})")
    params, segments = request.params, len(request.prompts)
    frames = 1 + params.frames_per_segment * segments
    if frames > MAX_VIDEO_FRAMES:
        raise ValueError(
            f"frames: 1 + frames x prompts is {frames}, over the {MAX_VIDEO_FRAMES} frames a video may have"
        )
    if params.keyframes * segments > MAX_VIDEO_KEYFRAMES:
        raise ValueError(
            f"keyframes: keyframes x prompts is {params.keyframes * segments}, more than the "
            f"{MAX_VIDEO_KEYFRAMES} key frames a video may have"
        )


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    """The bytes at a path or fsspec URL; a missing file raises ImageError with the path."""
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as handle:
            return handle.read()
    except FileNotFoundError:
        raise ImageError(f"image not found: {url}") from None
    except IsADirectoryError:
        raise ImageError(f"image path is a directory: {url}") from None
    except PermissionError:
        raise ImageError(f"image not readable (permission denied): {url}") from None
    except OSError as error:  # a storage error (a 503, a dropped connection): name the image
        reason = error.strerror or str(error) or type(error).__name__
        raise StorageError(error.errno, f"cannot read image {url}: {reason}") from error
