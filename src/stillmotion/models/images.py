"""Source images: size bounds, orientation, colour conversion and the fit to the model's size (DESIGN 1.1).

image = open_image(data, "photos/cat.jpg")  # ImageError past a bound of stillmotion.limits
fitted, fit = fit_image(image, 512)  # center square of the original, then resized to 512x512
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import PIL.Image

from ..limits import MAX_IMAGE_ASPECT, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE


class ImageError(ValueError):
    """An input image that cannot be used (missing, empty, corrupt, not an image, or out of bounds)."""


# What Pillow raises for bytes it cannot decode (UnidentifiedImageError is an OSError);
# DecompressionBombError (a corrupt or hostile header claiming a gigantic size) is not.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)


@dataclass(frozen=True)
class Fit:
    """How a source image was fitted to the model's square input; recorded in the metadata."""

    original_size: tuple[int, int]  # (width, height) after EXIF orientation
    original_mode: str  # PIL mode before conversion to RGB
    exif_transposed: bool  # whether the EXIF orientation tag rotated/flipped the image
    crop_box: tuple[int, int, int, int]  # (left, top, right, bottom) of the center square, original pixels
    size: int  # side length the square was resized to

    def to_dict(self) -> dict:
        return {
            "original_size": list(self.original_size),
            "original_mode": self.original_mode,
            "exif_transposed": self.exif_transposed,
            "crop_box": list(self.crop_box),
            "size": self.size,
        }


def check_image_size(width: int, height: int, name: str | None = None) -> None:
    """ImageError naming the bound for a size past stillmotion.limits (pixels, aspect ratio, short side)."""
    what = f"image {name}" if name else "image"
    short, long = sorted((width, height))
    if short < 1:
        raise ImageError(f"{what} has no pixels ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:
        reason = f"{width * height:,} pixels is over the limit of {MAX_IMAGE_PIXELS:,}"
    elif long / short > MAX_IMAGE_ASPECT:
        reason = f"aspect ratio {_ratio(long / short)}:1 is over the limit of {_ratio(MAX_IMAGE_ASPECT)}:1"
    elif short < MIN_IMAGE_SIDE:
        reason = f"its short side is under the minimum of {MIN_IMAGE_SIDE} px"
    else:
        return
    raise ImageError(f"{what} is {width}x{height} px: {reason}")


def _ratio(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def open_image(data: bytes, name: str | None = None) -> PIL.Image.Image:
    """Decode image bytes fully, once their header's size is within bounds (`check_image_size`).

    Raises ImageError with a readable reason naming `name` (a path). Pillow's own decompression-bomb
    guard (PIL.Image.MAX_IMAGE_PIXELS) stays on: it refuses a header before we see its size.
    """
    what = f"image {name}" if name else "image"
    if not data:
        raise ImageError(f"{what} is empty (0 bytes)")
    try:
        image = PIL.Image.open(io.BytesIO(data))  # reads the header only
    except PIL.UnidentifiedImageError:  # its message shows the BytesIO object, not the file
        raise ImageError(f"cannot decode {what}: not a known image format") from None
    except PIL.Image.DecompressionBombError as error:  # over twice PIL.Image.MAX_IMAGE_PIXELS
        over_ours = 2 * (PIL.Image.MAX_IMAGE_PIXELS or 0) >= MAX_IMAGE_PIXELS
        bound = f"is over the limit of {MAX_IMAGE_PIXELS:,} pixels" if over_ours else "is refused"
        raise ImageError(f"{what} {bound} (Pillow's decompression-bomb guard: {error})") from None
    except _DECODE_ERRORS as error:
        raise ImageError(f"cannot decode {what}: {error}") from None
    check_image_size(image.width, image.height, name)  # before a single pixel is decoded
    try:
        image.load()
    except _DECODE_ERRORS as error:
        raise ImageError(f"cannot decode {what}: {error}") from None
    return image


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL mode to 8-bit RGB: alpha over white, 16-bit scaled to 8-bit, CMYK/L/P converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        image = PIL.Image.fromarray(array, mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = 1.0 if array.max() <= 1.0 else 255.0
        image = PIL.Image.fromarray(np.clip(np.round(array / top * 255), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" or (image.mode in ("1", "L", "RGB") and image.info.get("transparency") is not None):
        image = image.convert("RGBA")  # a palette or tRNS transparency becomes a real alpha channel
    if image.mode == "La":
        image = image.convert("LA")  # Pillow has no La -> RGBA conversion
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def fit_image(image: PIL.Image.Image, size: int) -> tuple[PIL.Image.Image, Fit]:
    """EXIF-orient, convert to RGB, center-crop a square of the short side and resize it to `size`.

    Cropping first means the resize only ever sees the square: a long thin image costs no huge resize.
    Size bounds are `open_image`'s: any PIL image fits here (a 1x1 pixel becomes a flat square).
    """
    # 1. orientation
    # (PIL.ImageOps.exif_transpose also re-serialises the EXIF block, which raises on a corrupt tag
    # elsewhere in it; only the pixels matter here.)
    method = _EXIF_TRANSPOSE.get(_orientation(image))  # 1 is upright; 0 and >8 are invalid: kept as is
    transposed = method is not None
    oriented = image.transpose(method) if transposed else image
    mode = image.mode
    rgb = to_rgb(oriented)
    # 2. center square of the short side, in the original's pixels
    width, height = rgb.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    square = rgb.crop(box)
    # 3. resize the square
    fitted = square.resize((size, size), PIL.Image.Resampling.LANCZOS)
    return fitted, Fit((width, height), mode, transposed, box, size)


# EXIF orientation -> the transpose that displays the image upright (as PIL.ImageOps.exif_transpose)
_EXIF_TRANSPOSE = {
    2: PIL.Image.Transpose.FLIP_LEFT_RIGHT,
    3: PIL.Image.Transpose.ROTATE_180,
    4: PIL.Image.Transpose.FLIP_TOP_BOTTOM,
    5: PIL.Image.Transpose.TRANSPOSE,
    6: PIL.Image.Transpose.ROTATE_270,
    7: PIL.Image.Transpose.TRANSVERSE,
    8: PIL.Image.Transpose.ROTATE_90,
}


def _orientation(image: PIL.Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block means "no orientation"
        return 1


def pil_to_tensor(image: PIL.Image.Image):
    """RGB PIL image to a (1, 3, H, W) float tensor in [-1, 1], as the SD VAE expects."""
    import torch

    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(images) -> list[PIL.Image.Image]:
    """(B, 3, H, W) tensor in [-1, 1] to a list of RGB PIL images."""
    array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to("cpu").numpy().astype(np.uint8)
    return [PIL.Image.fromarray(frame.transpose(1, 2, 0)) for frame in array]
