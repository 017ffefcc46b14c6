"""What one video is made from, and reading its image: light imports (no torch), for the manifest code."""

from __future__ import annotations

from dataclasses import dataclass

import fsspec

from .models.images import ImageError
from .models.params import MethodParams
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

    @property
    def synthetic(self) -> bool:
        return self.source_prompt is not None


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
