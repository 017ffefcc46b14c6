"""Source images (DESIGN 1.1): every awkward but valid input is oriented, converted to RGB and
fitted to a square of the model size (the center square cropped first, then resized); unusable bytes
and images past the bounds of stillmotion.limits raise ImageError with a readable reason.

All images are generated here with PIL/numpy; nothing touches the network or the disk beyond
in-memory buffers."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import PIL.features
import PIL.Image
import pytest
import torch

from stillmotion.limits import MAX_IMAGE_ASPECT, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from stillmotion.models.images import (
    Fit,
    ImageError,
    check_image_size,
    fit_image,
    open_image,
    pil_to_tensor,
    tensor_to_pil,
    to_rgb,
)

SIZE = 64
RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


# ----------------------------------------------------------------------------- helpers


def encode(image: PIL.Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def reopen(image: PIL.Image.Image, fmt: str, **params) -> PIL.Image.Image:
    """Save to `fmt` in memory and decode again through `open_image`, as a real input would be."""
    return open_image(encode(image, fmt, **params))


def fit(image: PIL.Image.Image) -> tuple[np.ndarray, Fit]:
    fitted, record = fit_image(image, SIZE)
    assert fitted.mode == "RGB"
    assert fitted.size == (SIZE, SIZE)
    assert record.size == SIZE
    return np.asarray(fitted), record


def halves(mode: str, size: tuple[int, int], left, right) -> PIL.Image.Image:
    """An image whose left half is `left` and right half is `right` (colours in `mode`)."""
    image = PIL.Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def assert_colour(pixel, expected, tol: int = 1) -> None:
    got = np.asarray(pixel, dtype=int)
    assert np.abs(got - np.asarray(expected, dtype=int)).max() <= tol, f"{tuple(got)} != {expected}"


def assert_halves(array: np.ndarray, left, right, tol: int = 1) -> None:
    """Samples well inside the left and the right half of a fitted image."""
    for y in (8, SIZE // 2, SIZE - 8):
        assert_colour(array[y, 8], left, tol)
        assert_colour(array[y, SIZE - 8], right, tol)


def over_white(rgb, alpha: int) -> tuple[int, ...]:
    return tuple(round(c * alpha / 255 + 255 * (1 - alpha / 255)) for c in rgb)


# ----------------------------------------------------------------------------- colour modes


def test_grayscale_l():
    array, record = fit(reopen(halves("L", (80, 64), 0, 200), "PNG"))
    assert record.original_mode == "L"
    assert_halves(array, (0, 0, 0), (200, 200, 200))


def test_one_bit():
    image = reopen(halves("1", (80, 64), 0, 1), "PNG")
    assert image.mode == "1"
    array, record = fit(image)
    assert record.original_mode == "1"
    assert_halves(array, (0, 0, 0), WHITE)


def palette_image(transparent_index: int | None) -> PIL.Image.Image:
    image = halves("P", (80, 64), 0, 1)
    image.putpalette([0, 0, 0, *BLUE, *RED] + [0] * (253 * 3))
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


def test_palette_without_transparency():
    image = palette_image(None)
    image.putpalette([*RED, *BLUE] + [0] * (254 * 3))
    image = reopen(image, "PNG")
    assert image.mode == "P"
    array, record = fit(image)
    assert record.original_mode == "P"
    assert_halves(array, RED, BLUE)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_is_white(fmt):
    # Index 0 is black in the palette but transparent: it must come out white, not black.
    image = reopen(palette_image(transparent_index=0), fmt, transparency=0)
    assert image.mode == "P" and image.info.get("transparency") == 0
    array, _ = fit(image)
    assert_halves(array, WHITE, BLUE)


def test_palette_with_per_entry_alpha():
    # A PNG tRNS chunk can give each palette entry its own alpha (here: 0, 255, 128).
    image = palette_image(None)
    image.paste(2, (0, 0, 40, 32))  # top-left quarter: half-transparent red
    image = reopen(image, "PNG", transparency=bytes([0, 255, 128]))
    assert image.mode == "P"
    out = np.asarray(to_rgb(image))
    assert_colour(out[48, 10], WHITE, 0)
    assert_colour(out[10, 10], over_white(RED, 128))
    assert_colour(out[10, 70], BLUE, 0)


RGBA_QUADRANTS = {
    # (column, row) of a 2x2 grid: RGBA colour
    (0, 0): (0, 0, 0, 0),  # fully transparent black -> white
    (1, 0): (10, 200, 30, 255),  # opaque -> unchanged
    (0, 1): (255, 0, 0, 128),  # half-transparent red
    (1, 1): (0, 0, 255, 64),  # mostly transparent blue
}


def test_rgba_alpha_composited_over_white():
    image = PIL.Image.new("RGBA", (64, 64))
    for (col, row), colour in RGBA_QUADRANTS.items():
        image.paste(colour, (col * 32, row * 32, col * 32 + 32, row * 32 + 32))
    array, record = fit(reopen(image, "PNG"))
    assert record.original_mode == "RGBA"
    for (col, row), colour in RGBA_QUADRANTS.items():
        expected = over_white(colour[:3], colour[3])
        assert_colour(array[row * 32 + 16, col * 32 + 16], expected, tol=1)
    # exact values, pixel by pixel, without any resampling
    exact = np.asarray(to_rgb(image))
    assert tuple(exact[5, 5]) == WHITE
    assert tuple(exact[5, 40]) == (10, 200, 30)


def test_rgba_larger_than_model_size_keeps_alpha_semantics():
    image = halves("RGBA", (200, 128), (0, 0, 0, 0), (10, 200, 30, 255))
    array, _ = fit(image)
    assert_halves(array, WHITE, (10, 200, 30))


def test_la():
    image = reopen(halves("LA", (80, 64), (0, 0), (50, 255)), "PNG")
    assert image.mode == "LA"
    array, record = fit(image)
    assert record.original_mode == "LA"
    assert_halves(array, WHITE, (50, 50, 50))


@pytest.mark.parametrize(
    ("mode", "transparent", "kept"),
    [("L", 10, 200), ("RGB", (10, 20, 30), (1, 2, 3))],
)
def test_trns_transparency_of_l_and_rgb_png_is_white(mode, transparent, kept):
    # PNG can mark one grey level / one RGB colour as fully transparent (tRNS chunk).
    image = reopen(halves(mode, (80, 64), transparent, kept), "PNG", transparency=transparent)
    assert image.info.get("transparency") == transparent
    array, _ = fit(image)
    kept_rgb = kept if isinstance(kept, tuple) else (kept,) * 3
    assert_halves(array, WHITE, kept_rgb)


def test_sixteen_bit_grayscale_png_scaled_to_eight_bit():
    # Three bands: 0, 32768, 65535. 96x64 -> resized 96x64 -> crop x 16..80.
    values = np.zeros((64, 96), dtype=np.uint16)
    values[:, 32:64] = 32768
    values[:, 64:] = 65535
    image = reopen(PIL.Image.fromarray(values), "PNG")
    assert image.mode == "I;16"
    array, record = fit(image)
    assert record.original_mode == "I;16"
    assert_colour(array[32, 4], (0, 0, 0), 0)
    assert_colour(array[32, 32], (128, 128, 128), 1)
    assert_colour(array[32, 60], WHITE, 0)


def test_sixteen_bit_values_exact():
    values = np.tile(np.array([0, 257, 32768, 65535], dtype=np.uint16), (16, 4))  # 16x16: within bounds
    out = np.asarray(to_rgb(reopen(PIL.Image.fromarray(values), "PNG")))
    assert out[0, :4, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_thirty_two_bit_i_mode():
    wide = PIL.Image.fromarray(np.array([[0, 1000, 32768, 65535, 100000, -5]], dtype=np.int32))
    assert wide.mode == "I"
    assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 4, 128, 255, 255, 0]
    # I-mode data that fits in 8 bits (as some decoders produce) keeps its values
    narrow = PIL.Image.fromarray(np.array([[0, 7, 128, 255]], dtype=np.int32))
    assert np.asarray(to_rgb(narrow))[0, :, 0].tolist() == [0, 7, 128, 255]
    array, record = fit(PIL.Image.fromarray(np.full((64, 80), 65535, dtype=np.int32)))
    assert record.original_mode == "I"
    assert (array == 255).all()


def test_float_mode():
    image = PIL.Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert image.mode == "F"
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_jpeg():
    image = halves("CMYK", (80, 64), (0, 255, 255, 0), (0, 0, 0, 128))
    data = encode(image, "JPEG", quality=95)
    opened = open_image(data)
    assert opened.mode == "CMYK"
    array, record = fit(opened)
    assert record.original_mode == "CMYK"
    assert_halves(array, RED, (127, 127, 127), tol=8)


@pytest.mark.parametrize(
    "mode",
    ["1", "L", "P", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"]
    + ["I", "F", "LA", "La", "PA", "I;16", "I;16L", "I;16B"],
)
def test_every_pil_mode_becomes_rgb(mode):
    image = PIL.Image.new(mode, (5, 3))
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (5, 3)


# ----------------------------------------------------------------------------- EXIF orientation


def exif_jpeg(orientation: int | None) -> bytes:
    """A stored 96x64 JPEG: its top-left quadrant is red (the marker), the rest blue."""
    image = PIL.Image.new("RGB", (96, 64), BLUE)
    image.paste(RED, (0, 0, 48, 32))
    params = {"quality": 95}
    if orientation is not None:
        exif = PIL.Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif.tobytes()
    return encode(image, "JPEG", **params)


def marker_corner(array: np.ndarray) -> str:
    corners = {"top-left": (12, 12), "top-right": (12, 52), "bottom-left": (52, 12), "bottom-right": (52, 52)}
    red = [name for name, (y, x) in corners.items() if np.abs(array[y, x].astype(int) - RED).max() <= 40]
    blue = [name for name, (y, x) in corners.items() if np.abs(array[y, x].astype(int) - BLUE).max() <= 40]
    assert len(red) == 1 and len(blue) == 3, (red, blue)
    return red[0]


@pytest.mark.parametrize(
    ("orientation", "displayed_size", "corner"),
    [
        (2, (96, 64), "top-right"),  # mirrored left-right
        (3, (96, 64), "bottom-right"),  # rotated 180
        (4, (96, 64), "bottom-left"),  # mirrored top-bottom
        (5, (64, 96), "top-left"),  # mirrored along the main diagonal
        (7, (64, 96), "bottom-right"),  # mirrored along the anti-diagonal
        (6, (64, 96), "top-right"),  # rotate 90 clockwise to display
        (8, (64, 96), "bottom-left"),  # rotate 90 counter-clockwise to display
    ],
)
def test_exif_orientation_applied(orientation, displayed_size, corner):
    image = open_image(exif_jpeg(orientation))
    assert image.size == (96, 64)  # stored, not yet oriented
    array, record = fit(image)
    assert record.exif_transposed is True
    assert record.original_size == displayed_size
    margin = (max(displayed_size) - SIZE) // 2  # the short side is already SIZE: the crop is the resize
    assert record.crop_box == (
        (margin, 0, margin + SIZE, SIZE) if displayed_size[0] > SIZE else (0, margin, SIZE, margin + SIZE)
    )
    assert marker_corner(array) == corner


def test_exif_orientation_with_a_corrupt_tag_elsewhere():
    # Orientation 6 plus a "Make" string re-tagged as 0x0108 (a SHORT tag): Pillow reads it, but
    # cannot write that EXIF block back, which PIL.ImageOps.exif_transpose tries to do.
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "cam"
    raw = exif.tobytes()
    corrupt = raw.replace(b"\x01\x0f\x00\x02", b"\x01\x08\x00\x02")
    assert corrupt != raw
    image = PIL.Image.new("RGB", (96, 64), BLUE)
    image.paste(RED, (0, 0, 48, 32))
    array, record = fit(open_image(encode(image, "JPEG", quality=95, exif=corrupt)))
    assert record.exif_transposed is True and record.original_size == (64, 96)
    assert marker_corner(array) == "top-right"


@pytest.mark.parametrize("orientation", [None, 1, 9])
def test_upright_or_invalid_orientation_is_not_transposed(orientation):
    array, record = fit(open_image(exif_jpeg(orientation)))
    assert record.exif_transposed is False
    assert record.original_size == (96, 64)
    assert marker_corner(array) == "top-left"


# ----------------------------------------------------------------------------- sizes


def test_one_by_one_pixel_fits_but_is_refused_as_a_file():
    # fit_image fits any PIL image; open_image, the door every input comes through, refuses this one
    array, record = fit(PIL.Image.new("RGB", (1, 1), (12, 34, 56)))
    assert record.original_size == (1, 1) and record.crop_box == (0, 0, 1, 1)
    assert np.abs(array.astype(int) - (12, 34, 56)).max() <= 1
    with pytest.raises(
        ImageError, match=f"is 1x1 px: its short side is under the minimum of {MIN_IMAGE_SIDE} px"
    ):
        reopen(PIL.Image.new("RGB", (1, 1)), "PNG")


@pytest.mark.parametrize("size", [(1, 500), (500, 1)])
def test_very_thin_image_keeps_its_center(size):
    # red / green / blue thirds along the long side: only the green middle may survive the crop
    long = max(size)
    strip = np.zeros((long, 3), dtype=np.uint8)
    strip[: long * 2 // 5] = RED
    strip[long * 2 // 5 : long * 3 // 5] = (0, 255, 0)
    strip[long * 3 // 5 :] = BLUE
    image = PIL.Image.fromarray(strip[:, None, :] if size == (1, 500) else strip[None, :, :])
    assert image.size == size
    array, record = fit(image)
    assert record.original_size == size
    assert record.crop_box == ((0, 249, 1, 250) if size == (1, 500) else (249, 0, 250, 1))  # one pixel
    assert np.abs(array.astype(int) - (0, 255, 0)).max() <= 2


def test_huge_image():
    image = halves("RGB", (4000, 3000), RED, BLUE)
    opened = open_image(encode(image, "JPEG", quality=90))
    del image
    array, record = fit(opened)
    assert record.original_size == (4000, 3000)
    assert record.crop_box == (500, 0, 3500, 3000)  # the center square of the original
    assert_halves(array, RED, BLUE, tol=12)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width`x`height` in its header, with no real pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ((1, 40000), "is 1x40000 px: aspect ratio 40000:1 is over the limit of 8:1"),
        ((40000, 1), "is 40000x1 px: aspect ratio 40000:1 is over the limit of 8:1"),
        ((900, 100), "is 900x100 px: aspect ratio 9:1 is over the limit of 8:1"),
        ((1, 1), "is 1x1 px: its short side is under the minimum of 16 px"),
        ((15, 20), "is 15x20 px: its short side is under the minimum of 16 px"),
        ((11000, 10000), "is 11000x10000 px: 110,000,000 pixels is over the limit of 100,000,000"),
    ],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns over 89.5M pixels
def test_images_past_a_bound_are_refused_naming_it(size, reason):
    assert (MAX_IMAGE_PIXELS, MAX_IMAGE_ASPECT, MIN_IMAGE_SIDE) == (
        100_000_000,
        8.0,
        16,
    )  # the messages' numbers
    with pytest.raises(ImageError) as info:
        open_image(png_header(*size), "photos/x.png")
    assert str(info.value) == f"image photos/x.png {reason}"


@pytest.mark.parametrize("size", [(16, 16), (16, 128), (128, 16), (6000, 1000), (10000, 10000)])
def test_sizes_on_the_bounds_are_accepted(size):
    check_image_size(*size)  # the header check alone: these would be slow to decode here
    if max(size) <= 128:
        assert open_image(encode(PIL.Image.new("L", size), "PNG")).size == size


def test_the_size_is_checked_from_the_header_before_decoding(monkeypatch):
    # a 1x40000 PNG is 157 bytes; its pixels are never decoded
    data = encode(PIL.Image.new("L", (1, 40000)), "PNG")
    loads = []
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda self: loads.append(self.size))
    with pytest.raises(ImageError, match="aspect ratio"):
        open_image(data)
    assert loads == []


def test_pillow_decompression_bomb_guard_stays_on(monkeypatch):
    # Pillow refuses a header over twice PIL.Image.MAX_IMAGE_PIXELS before we see its size
    data = encode(PIL.Image.new("RGB", (100, 100)), "PNG")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 > 2 x limit
    with pytest.raises(ImageError, match="decompression-bomb guard") as info:
        open_image(data)
    assert "refused" in str(info.value)  # Pillow's limit is below ours: not "over the limit of 100,000,000"
    monkeypatch.undo()  # Pillow's default (2 x 89,478,485) is above ours: what it refuses is over ours too
    with pytest.raises(
        ImageError, match=r"x.png is over the limit of 100,000,000 pixels \(Pillow's decompression"
    ):
        open_image(png_header(20000, 20000), "x.png")


# ----------------------------------------------------------------------------- crop first, then resize


def test_panorama_is_cropped_in_source_pixels_then_only_the_square_is_resized(monkeypatch):
    # 6000x1000 (6:1, within bounds): the crop box is in source pixels, and the one resize sees
    # the 1000x1000 square, never a 6000-wide image (resizing first would make a 384x64 image here,
    # and at Stable Diffusion's 512 px a 3072x512 one; a 1x40000 strip ~31 GB)
    rng = np.random.default_rng(4)
    image = PIL.Image.fromarray(rng.integers(0, 256, (1000, 6000, 3), dtype=np.uint8))
    resized_from = []
    original_resize = PIL.Image.Image.resize

    def spy(self, size, *args, **kwargs):
        resized_from.append(self.size)
        return original_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(PIL.Image.Image, "resize", spy)
    fitted, record = fit_image(image, SIZE)
    assert resized_from == [(1000, 1000)]
    assert record.crop_box == (2500, 0, 3500, 1000)
    expected = original_resize(image.crop((2500, 0, 3500, 1000)), (SIZE, SIZE), PIL.Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(fitted), np.asarray(expected))


def test_an_image_already_square_and_small_is_kept_as_is():
    image = PIL.Image.fromarray(np.random.default_rng(5).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    fitted, record = fit_image(image, SIZE)
    assert record.crop_box == (0, 0, SIZE, SIZE)
    assert np.array_equal(np.asarray(fitted), np.asarray(image))  # nothing to crop or resize


# ----------------------------------------------------------------------------- file formats


def format_params(fmt: str) -> dict:
    PIL.Image.init()  # registers every plugin, so that SAVE lists all writable formats
    if fmt not in PIL.Image.SAVE or (fmt == "WEBP" and not PIL.features.check("webp")):
        pytest.skip(f"Pillow here cannot write {fmt}")
    return {"WEBP": {"lossless": True}, "JPEG": {"quality": 95}}.get(fmt, {})


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_formats(fmt):
    params = format_params(fmt)
    image = open_image(encode(halves("RGB", (80, 64), RED, BLUE), fmt, **params))
    assert image.format == fmt
    array, record = fit(image)
    assert record.original_size == (80, 64)
    assert_halves(array, RED, BLUE, tol=10 if fmt == "JPEG" else 1)


def test_tiff_sixteen_bit():
    values = np.full((64, 80), 65535, dtype=np.uint16)
    values[:, :40] = 0
    image = open_image(encode(PIL.Image.fromarray(values), "TIFF"))
    assert image.mode.startswith("I;16")
    array, _ = fit(image)
    assert_halves(array, (0, 0, 0), WHITE, tol=0)


# ----------------------------------------------------------------------------- unusable bytes


def truncated_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(PIL.Image.fromarray(noise), "PNG")
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "cannot decode"),
        (truncated_png(), "cannot decode"),
        (b"hello, this is a text file and not an image\n" * 20, "cannot decode"),
    ],
    ids=["zero-bytes", "garbage", "truncated-png", "text"],
)
def test_unusable_bytes_raise_image_error(data, reason):
    with pytest.raises(ImageError) as info:
        open_image(data)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message and len(message) < 300
    assert isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------- the fit record


@pytest.mark.parametrize(
    "size",
    [(1, 1), (3, 7), (64, 64), (65, 64), (64, 65), (100, 64), (63, 200), (333, 97), (1, 500), (640, 480)],
)
def test_fit_record_is_consistent(size):
    width, height = size
    image = PIL.Image.new("RGB", size, (1, 2, 3))
    _, record = fit(image)
    assert record.original_size == size
    assert record.original_mode == "RGB"
    assert record.exif_transposed is False
    # the crop box is the largest square, in the original's pixels, centered (margins differ by <= 1)
    left, top, right, bottom = record.crop_box
    assert right - left == bottom - top == min(size)
    assert 0 <= left and 0 <= top and right <= width and bottom <= height
    assert abs(left - (width - right)) <= 1 and abs(top - (height - bottom)) <= 1
    as_dict = record.to_dict()
    assert as_dict == {
        "original_size": [width, height],
        "original_mode": "RGB",
        "exif_transposed": False,
        "crop_box": [left, top, right, bottom],
        "size": SIZE,
    }
    assert json.loads(json.dumps(as_dict)) == as_dict


def test_fit_center_crop_picks_the_middle():
    # 192x64: the middle third is green, so the whole 64x64 crop must be green
    image = PIL.Image.new("RGB", (192, 64), RED)
    image.paste((0, 255, 0), (64, 0, 128, 64))
    array, record = fit(image)
    assert record.crop_box == (64, 0, 128, 64)
    assert (array == (0, 255, 0)).all()


# ----------------------------------------------------------------------------- tensors


def test_tensor_round_trip_is_exact():
    values = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    values[0, :64, 0] = np.arange(64) * 4 + 3  # make sure extremes and many levels are present
    values[1, :, :] = 0
    values[2, :, :] = 255
    image = PIL.Image.fromarray(values)
    tensor = pil_to_tensor(image)
    assert tensor.shape == (1, 3, 48, 64) and tensor.dtype == torch.float32
    assert tensor.min().item() == -1.0 and tensor.max().item() == 1.0
    assert torch.allclose(tensor[0, :, 5, 7], torch.tensor(values[5, 7] / 127.5 - 1.0, dtype=torch.float32))
    (back,) = tensor_to_pil(tensor)
    assert back.mode == "RGB" and back.size == (64, 48)
    assert np.array_equal(np.asarray(back), values)


def test_tensor_to_pil_batch_and_clamp():
    values = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    tensor = pil_to_tensor(PIL.Image.fromarray(values))
    batch = torch.cat([tensor, tensor.flip(-1), torch.full_like(tensor, 3.0), torch.full_like(tensor, -3.0)])
    first, mirrored, bright, dark = tensor_to_pil(batch)
    assert np.array_equal(np.asarray(first), values)
    assert np.array_equal(np.asarray(mirrored), values[:, ::-1])
    assert (np.asarray(bright) == 255).all() and (np.asarray(dark) == 0).all()
    (half,) = tensor_to_pil(pil_to_tensor(PIL.Image.fromarray(values)).half())
    assert np.array_equal(np.asarray(half), values)


def test_fitted_image_feeds_the_vae_shape():
    fitted, _ = fit_image(PIL.Image.new("RGBA", (90, 70), (0, 0, 0, 0)), SIZE)
    tensor = pil_to_tensor(fitted)
    assert tensor.shape == (1, 3, SIZE, SIZE)
    assert torch.equal(tensor, torch.ones_like(tensor))  # transparent -> white -> +1
