"""Read a Parquet manifest in record batches and turn each row into a request or a row error.

    for row in iter_manifest("s3://bucket/run/manifest.parquet"):
        if row.error:
            print(row.error)
        else:
            run(row.request)

A bad row fails alone, with its column and reason; only an unreadable file or a missing required column
stops the whole manifest (ManifestError). Images are not opened here: see `validate_manifest`.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Iterator
from urllib.parse import urljoin

import fsspec
import pyarrow.parquet as pq

from ..models.params import MethodParams
from ..requests import VideoRequest
from .schema import (
    FLOAT_COLUMNS,
    INT_COLUMNS,
    MANIFEST_COLUMNS,
    RESERVED_IDS,
    VIDEO_ID_PATTERN,
    WORD_COLUMNS,
    ManifestError,
    ManifestRow,
    RowError,
    check_columns,
    column_type_error,
    column_warnings,
    default_seed,
)

_PROTOCOL = re.compile(r"^[A-Za-z][A-Za-z0-9+.:-]*://")  # also chains: "simplecache::s3://"
_MAX_SEED = 2**63  # torch generators take seeds below this


class _RowFailure(Exception):
    """Internal: one row's first problem, turned into a RowError by the reader."""

    def __init__(self, column: str, reason: str, column_wide: bool = False) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason
        self.column_wide = column_wide


def iter_manifest(
    url: str, storage_options: dict | None = None, batch_rows: int = 1024, limit: int | None = None
) -> Iterator[ManifestRow]:
    """Yield every row of the manifest (up to `limit`), reading `batch_rows` rows at a time."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if limit == 0:
        return
    try:
        handle = fsspec.open(url, "rb", **(storage_options or {})).open()
    except Exception as error:  # noqa: BLE001 - any failure to open is one line for the user
        raise ManifestError(f"cannot read manifest {url}: {_one_line(error)}") from None
    with handle:
        try:
            parquet = pq.ParquetFile(handle)
        except Exception as error:  # noqa: BLE001 - not Parquet, truncated, ...
            raise ManifestError(f"cannot read manifest {url}: {_one_line(error)}") from None
        schema = parquet.schema_arrow
        check_columns(schema, url)
        type_errors = {
            name: reason
            for name in MANIFEST_COLUMNS
            if name in schema.names and (reason := column_type_error(name, schema.field(name).type))
        }
        first_row: dict[str, int] = {}  # video_id -> index of its first row
        index = 0
        batches = parquet.iter_batches(batch_size=batch_rows)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as error:  # noqa: BLE001 - a corrupt page stops the manifest, with its URL
                raise ManifestError(
                    f"cannot read manifest {url} near row {index}: {_one_line(error)}"
                ) from None
            columns = {name: _python_values(batch.column(name)) for name in batch.schema.names}
            for offset in range(batch.num_rows):
                values = {name: column[offset] for name, column in columns.items()}
                yield _build_row(index, values, url, type_errors, first_row)
                index += 1
                if limit is not None and index >= limit:
                    return


class _BadValue:
    """A value that cannot become a Python object (text that is not UTF-8): it fails its own row."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _python_values(column) -> list:
    """A column's values as Python objects; a value that cannot convert becomes a _BadValue."""
    try:
        return column.to_pylist()
    except (UnicodeDecodeError, ValueError):  # one bad value spoils the whole conversion: go value by value
        values = []
        for scalar in column:
            try:
                values.append(scalar.as_py())
            except (UnicodeDecodeError, ValueError) as error:
                reason = "text is not valid UTF-8" if isinstance(error, UnicodeDecodeError) else str(error)
                values.append(_BadValue(reason))
        return values


def resolve_image(image: str, manifest_url: str) -> str:
    """An image as an fsspec URL: absolute paths and URLs stay, relative paths join the manifest's folder."""
    if _PROTOCOL.match(image) or os.path.isabs(image):
        return image
    if manifest_url.startswith(("http://", "https://")):
        return urljoin(manifest_url, image)
    if not _PROTOCOL.match(manifest_url):
        folder = os.path.dirname(os.path.abspath(manifest_url))
        return os.path.normpath(os.path.join(folder, image))
    # everything up to the last "://" is the protocol chain, e.g. "s3://" or "simplecache::s3://"
    split = manifest_url.rindex("://") + 3
    prefix, path = manifest_url[:split], manifest_url[split:]
    return prefix + posixpath.normpath(posixpath.join(posixpath.dirname(path), image))


def _build_row(
    index: int, values: dict, url: str, type_errors: dict[str, str], first_row: dict[str, int]
) -> ManifestRow:
    raw = values.get("video_id")
    raw_id = None if raw is None or isinstance(raw, _BadValue) else raw if isinstance(raw, str) else str(raw)
    safe_id = raw_id if raw_id is not None and _is_safe_id(raw_id) else None
    bad = {name: value.reason for name, value in values.items() if isinstance(value, _BadValue)}
    extra = {
        name: None if name in bad else value for name, value in values.items() if name not in MANIFEST_COLUMNS
    }
    try:
        if "video_id" in bad:
            raise _RowFailure("video_id", bad["video_id"])
        _check_video_id(index, raw_id, safe_id, type_errors, first_row)
        if type_errors:
            raise _RowFailure(*next(iter(type_errors.items())), column_wide=True)
        if bad:
            raise _RowFailure(*next(iter(bad.items())))
        request = _request(safe_id, values, url)
    except _RowFailure as failure:
        error = RowError(index, raw_id, failure.column, failure.reason, failure.column_wide)
        return ManifestRow(index, safe_id, None, error, extra)
    return ManifestRow(index, safe_id, request, None, extra)


def _is_safe_id(video_id: str) -> bool:
    return bool(VIDEO_ID_PATTERN.fullmatch(video_id)) and video_id.lower() not in RESERVED_IDS


def _check_video_id(
    index: int,
    raw_id: str | None,
    safe_id: str | None,
    type_errors: dict[str, str],
    first_row: dict[str, int],
) -> None:
    if "video_id" in type_errors:
        raise _RowFailure("video_id", type_errors["video_id"], column_wide=True)
    if raw_id is None:
        raise _RowFailure("video_id", "video_id is missing")
    if safe_id is None:
        if raw_id.lower() in RESERVED_IDS:
            raise _RowFailure("video_id", f"{raw_id!r} is reserved: the output root uses that name itself")
        raise _RowFailure(
            "video_id",
            f"{raw_id!r} is not a safe id: use 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit",
        )
    first = first_row.setdefault(safe_id, index)
    if first != index:
        raise _RowFailure("video_id", f"duplicate of row {first}")


def _request(video_id: str, values: dict, url: str) -> VideoRequest:
    image, source_prompt = values.get("image"), values.get("source_prompt")
    if image is not None and source_prompt is not None:
        raise _RowFailure("image", "give exactly one of image and source_prompt, not both")
    if image is None and source_prompt is None:
        raise _RowFailure("image", "give exactly one of image and source_prompt, both are missing")
    if image is not None and not image.strip():
        raise _RowFailure("image", "image is blank")
    if source_prompt is not None and not source_prompt.strip():
        raise _RowFailure("source_prompt", "source_prompt is blank")

    prompts = values.get("prompts")
    if not prompts:
        raise _RowFailure("prompts", "the prompt list is missing or empty")
    for number, prompt in enumerate(prompts, 1):  # counted from 1, as `generate --prompt` counts them
        if prompt is None or not prompt.strip():
            raise _RowFailure("prompts", f"prompt {number} is blank")

    params = _params(video_id, values)
    caption = values.get("caption")
    if source_prompt is not None and caption and caption.strip():
        raise _RowFailure("caption", "a caption is for an image row; a source_prompt row is captioned by it")
    try:
        return VideoRequest(
            video_id=video_id,
            prompts=tuple(prompts),
            params=params,
            image=resolve_image(image.strip(), url) if image is not None else None,
            source_prompt=source_prompt,
            caption=caption if caption and caption.strip() else None,
        )
    except ValueError as error:  # a bound of stillmotion.limits (named first), or a check above missed
        raise _failure_of(error, "prompts" if "prompt" in str(error) else "image") from None


def _params(video_id: str, values: dict) -> MethodParams:
    numbers: dict = {}
    for name in INT_COLUMNS + FLOAT_COLUMNS:
        value = values.get(name)
        if value is not None:
            numbers[name] = _as_int(name, value) if name in INT_COLUMNS else float(value)
    seed = numbers.pop("seed", None)
    if seed is None:
        seed = default_seed(video_id)
    elif not 0 <= seed < _MAX_SEED:
        raise _RowFailure("seed", f"seed must be in 0..2**63-1, got {seed}")
    words = {name: values[name] for name in WORD_COLUMNS if values.get(name) is not None}
    for name in ("direction_templates", "inject_layers"):
        if values.get(name):
            words[name] = tuple(values[name])
    try:
        return MethodParams(seed=seed, **numbers, **words)
    except ValueError as error:
        raise _failure_of(error, "params") from None


def _failure_of(error: ValueError, fallback: str) -> _RowFailure:
    """The row failure of a ValueError that names its field first: "fps must be in 1..120, got 0" or
    "prompts: at most 32 prompts per video, got 40" (the column, then a colon, is not repeated)."""
    text = str(error)
    first_word = text.split(" ", 1)[0]
    column = first_word.rstrip(":") if first_word.rstrip(":") in MANIFEST_COLUMNS else fallback
    return _RowFailure(column, text.removeprefix(f"{column}: "))


def _as_int(name: str, value: object) -> int:
    if isinstance(value, int):
        return value
    try:
        number = float(value)  # floats, half floats, decimals
    except (TypeError, ValueError):
        raise _RowFailure(name, f"expected an integer, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise _RowFailure(name, f"expected an integer, got {value}")
    return int(value)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return (
        f"{type(error).__name__}: {text}" if isinstance(error, FileNotFoundError | PermissionError) else text
    )


def manifest_warnings(url: str, storage_options: dict | None = None) -> list[str]:
    """What looks wrong in the manifest's columns without failing a row (a misspelt option column), from
    the Parquet footer; [] when it cannot be read (reading it for real says why)."""
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as handle:
            schema = pq.ParquetFile(handle).schema_arrow
    except Exception:  # noqa: BLE001 - the run's or validate's own read reports it, in one line
        return []
    return column_warnings(schema)


def caption_needs(url: str, limit: int | None = None, storage_options: dict | None = None) -> tuple[int, int]:
    """(image rows with no caption, rows) among the first `limit` rows: the rows a captioner must caption.
    Reads the image, source_prompt and caption columns only; (0, 0) when they cannot be read (the run's
    own read says why, or fails those rows on their column)."""
    needing = rows = 0
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as handle:
            parquet = pq.ParquetFile(handle)
            schema = parquet.schema_arrow
            names = [name for name in ("image", "source_prompt", "caption") if name in schema.names]
            if "image" not in names or any(
                column_type_error(name, schema.field(name).type) for name in names
            ):
                return 0, 0  # no image rows, or rows that fail on a column's type anyway
            for batch in parquet.iter_batches(columns=names, batch_size=65536):
                n = batch.num_rows
                images = batch.column("image").to_pylist()
                sources = (
                    batch.column("source_prompt").to_pylist() if "source_prompt" in names else [None] * n
                )
                captions = batch.column("caption").to_pylist() if "caption" in names else [None] * n
                for image, source, caption in zip(images, sources, captions, strict=True):
                    if limit is not None and rows >= limit:
                        return needing, rows
                    rows += 1
                    needing += bool(
                        image and image.strip() and source is None and not (caption and caption.strip())
                    )
    except Exception:  # noqa: BLE001 - unreadable, or text that is not UTF-8: the run's own read reports it
        return 0, 0
    return needing, rows


def manifest_summary(url: str, storage_options: dict | None = None) -> tuple[int, list]:
    """(row count, Arrow fields of the extra columns) from the Parquet footer, without reading rows."""
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as handle:
            parquet = pq.ParquetFile(handle)
            schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
    except Exception as error:  # noqa: BLE001 - any failure to open is one line for the user
        raise ManifestError(f"cannot read manifest {url}: {_one_line(error)}") from None
    check_columns(schema, url)
    return rows, [field for field in schema if field.name not in MANIFEST_COLUMNS]
