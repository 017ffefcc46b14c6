"""`stillmotion validate`: every bad row of a manifest, with the run's own checks.

The reader's (every column, and the bounds of stillmotion.limits on numbers, lists and texts), then each
image's: its size against the image bounds, from its header, and a full decode. A problem of a whole
column (its type) is one line with the count of rows it fails, not one line per row; a column that looks
like a misspelt option column is a warning.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from typing import TextIO

import PIL.Image
from fsspec.core import split_protocol

from ..models.images import ImageError, open_image
from ..requests import read_bytes
from .reader import iter_manifest, manifest_warnings
from .schema import ManifestRow, RowError


def check_rows(
    url: str, storage_options: dict | None = None, check_images: bool = True
) -> Iterator[tuple[ManifestRow, RowError | None]]:
    """Every row with its error (None when valid); with check_images, images out of bounds or undecodable."""
    for row in iter_manifest(url, storage_options):
        if row.error is not None or not check_images or row.request is None or row.request.image is None:
            yield row, row.error
            continue
        image = row.request.image
        try:
            open_image(read_bytes(image, _options_for(image, url, storage_options)), image)
        except (ImageError, OSError, PIL.Image.DecompressionBombError) as error:
            yield row, RowError(row.index, row.video_id, "image", str(error) or type(error).__name__)
        else:
            yield row, None


def validate_manifest(
    url: str, storage_options: dict | None = None, check_images: bool = True
) -> Iterator[RowError]:
    """Yield the error of every bad row, in row order."""
    for _row, error in check_rows(url, storage_options, check_images):
        if error is not None:
            yield error


def print_validation(url: str, storage_options: dict | None = None, out: TextIO | None = None) -> int:
    """Print a warning per misspelt-looking column, one line per bad row (one per column, with its count
    of rows, for a column of the wrong type) and a summary; 0 when every row is valid, 1 otherwise."""
    out = out if out is not None else sys.stdout
    for warning in manifest_warnings(url, storage_options):
        print(f"warning: {warning}", file=out)
    rows = invalid = 0
    whole_columns: Counter[tuple[str, str]] = Counter()  # (column, reason) -> rows it fails
    for _row, error in check_rows(url, storage_options):
        rows += 1
        if error is not None:
            invalid += 1
            if error.column_wide:
                whole_columns[error.column, " ".join(error.reason.split())] += 1
            else:
                print(error, file=out)
    for (column, reason), count in whole_columns.items():
        print(f"{column}: {reason}: {count} row{'s' if count != 1 else ''} fail for it", file=out)
    print(f"{rows} rows, {invalid} invalid", file=out)
    return 0 if invalid == 0 else 1


def _options_for(image: str, manifest_url: str, storage_options: dict | None) -> dict | None:
    """The manifest's storage options apply to images on the same protocol only (e.g. s3 keys)."""
    same = split_protocol(image)[0] == split_protocol(manifest_url)[0]
    return storage_options if same else None
