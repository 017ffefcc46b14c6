"""The manifest's columns (DESIGN 4), the errors a manifest can raise, and the row a reader yields."""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field

import pyarrow as pa

from ..requests import VideoRequest

VIDEO_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Names the output root uses for itself; a video folder may not take them (compared case-insensitively,
# for case-insensitive file systems). Dot-folders (.cache, .logs, .staging) are out of the id pattern.
RESULTS_FILE = "results.parquet"
REPORT_FILE = "report.html"
RESERVED_IDS = frozenset({RESULTS_FILE, REPORT_FILE})

# column -> canonical Arrow type; readers accept any type that casts safely to it (see `column_type_error`)
MANIFEST_COLUMNS: dict[str, pa.DataType] = {
    "video_id": pa.string(),
    "image": pa.string(),
    "source_prompt": pa.string(),
    "prompts": pa.list_(pa.string()),
    "caption": pa.string(),
    "keyframes": pa.int64(),
    "frames": pa.int64(),
    "fps": pa.int64(),
    "seed": pa.int64(),
    "steps": pa.int64(),
    "xa_guidance": pa.float64(),
    "cfg_scale": pa.float64(),
    "curve": pa.string(),
    "cross_frame": pa.string(),
    "insertion": pa.string(),  # spline | adaptive | motion
    "candidates": pa.int64(),  # best of N key-frame sets (1)
    "batch_size": pa.int64(),  # key frames per UNet batch: memory, never the numbers (capped by --batch-size)
    # the edit options (models/params.py; default: the model's stillmotion.json, else Stable Diffusion's)
    "direction": pa.string(),  # prompt | sentences
    "direction_templates": pa.list_(pa.string()),  # sentences with one "{}" for the changed word
    "xa_until": pa.float64(),  # guidance on for this fraction of the steps, (0, 1]
    "xa_schedule": pa.string(),  # constant | linear
    "inbetween": pa.string(),  # embedding | latent
    "negative": pa.string(),  # caption | empty | neutral
    "negative_until": pa.float64(),  # that negative (not "caption") for this fraction of the steps, (0, 1]
    "negative_from": pa.float64(),  # ... and from this fraction on, [0, 1): on [from, until)
    "edit_from": pa.float64(),  # key frames follow the unedited source frame for this fraction, [0, 1)
    "inject_features": pa.float64(),  # key frames take the source frame's features for this fraction, [0, 1]
    "inject_layers": pa.list_(pa.string()),  # the UNet ResNet blocks inject_features replaces
    "inject_mode": pa.string(),  # replace | layout: the source's features, or their layout alone
}
MANIFEST_SCHEMA = pa.schema([pa.field(name, kind) for name, kind in MANIFEST_COLUMNS.items()])
REQUIRED_COLUMNS = ("video_id", "prompts")
SOURCE_COLUMNS = ("image", "source_prompt")  # a manifest needs at least one; a row exactly one
INT_COLUMNS = ("keyframes", "frames", "fps", "seed", "steps", "batch_size", "candidates")
FLOAT_COLUMNS = (
    "xa_guidance",
    "cfg_scale",
    "xa_until",
    "negative_until",
    "negative_from",
    "edit_from",
    "inject_features",
)
LIST_COLUMNS = ("prompts", "direction_templates", "inject_layers")  # lists of strings
WORD_COLUMNS = (
    "curve",
    "cross_frame",
    "insertion",
    "direction",
    "xa_schedule",
    "inbetween",
    "negative",
    "inject_mode",
)


class ManifestError(ValueError):
    """A manifest that cannot be read at all: unreadable, not Parquet, or missing a required column."""


@dataclass(frozen=True)
class RowError:
    """Why one manifest row cannot run: the row, its id, the column at fault and a readable reason."""

    row: int  # 0-based row index in the file
    video_id: str | None  # the id as written (possibly unsafe), None when absent
    column: str
    reason: str
    column_wide: bool = (
        False  # the whole column is at fault (its type): `validate` says it once, with a count
    )

    def __str__(self) -> str:
        shown = (
            self.video_id
            if self.video_id and VIDEO_ID_PATTERN.fullmatch(self.video_id)
            else repr(self.video_id)
        )
        return f"row {self.row} (video_id={shown}): {self.column}: {' '.join(self.reason.split())}"


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row: a request ready to run, or the error that stops it; extra columns either way."""

    index: int  # 0-based row index in the file
    video_id: str | None  # the id when it is safe as a folder name, else None
    request: VideoRequest | None  # None when the row is invalid
    error: RowError | None
    extra: dict = field(default_factory=dict)  # unknown columns, as Python values

    @property
    def ok(self) -> bool:
        return self.error is None


def default_seed(video_id: str) -> int:
    """A seed derived from the id: the same in every run and process, different between ids."""
    return int.from_bytes(hashlib.sha256(video_id.encode("utf-8")).digest()[:4], "big") & 0x7FFFFFFF


def check_columns(schema: pa.Schema, url: str) -> None:
    """Raise ManifestError when a required column is missing or a column name appears twice."""
    names = schema.names
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ManifestError(f"manifest {url}: column(s) appear more than once: {', '.join(duplicated)}")
    for name in REQUIRED_COLUMNS:
        if name not in names:
            raise ManifestError(f"manifest {url}: required column {name!r} is missing")
    if not any(name in names for name in SOURCE_COLUMNS):
        raise ManifestError(f"manifest {url}: needs an 'image' or a 'source_prompt' column, found neither")


def misspelt_columns(names: list[str]) -> list[tuple[str, str]]:
    """(column, the manifest column it looks like) for each column that is not a manifest column but
    matches one but for case, separators or a small typo (`Frames`, `fsp`, `key-frames`): carried through
    as an extra column, it would silently leave its option at the default. difflib proposes, and a typo
    is at most one edit (two for names over five letters; a swap of neighbours is one)."""
    found = []
    for name in names:
        if name in MANIFEST_COLUMNS:
            continue
        lowered = name.strip().lower().replace("-", "_").replace(" ", "_")
        for known in difflib.get_close_matches(lowered, MANIFEST_COLUMNS, n=3, cutoff=0.6):
            if _edits(lowered, known) <= (1 if len(known) <= 5 else 2) or lowered.replace(
                "_", ""
            ) == known.replace("_", ""):
                found.append((name, known))
                break
    return found


def _edits(a: str, b: str) -> int:
    """Edits from a to b: insertions, deletions, substitutions and swaps of neighbours (optimal string
    alignment distance)."""
    previous2, previous = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], previous2[j - 2] + 1)
        previous2, previous = previous, row
    return previous[-1]


def column_warnings(schema: pa.Schema) -> list[str]:
    """One line per column that looks like a misspelt manifest column."""
    return [
        f"column {name!r} is not a manifest column (carried to the results as is, the option left at its "
        f"default): did you mean {known!r}?"
        for name, known in misspelt_columns(schema.names)
    ]


def column_type_error(name: str, kind: pa.DataType) -> str | None:
    """Why a column of this Arrow type cannot be read as the manifest column `name`; None when it can."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_null(kind):  # an all-null column: every value is missing
        return None
    if name in INT_COLUMNS or name in FLOAT_COLUMNS:
        # floats are checked value by value: 3.0 is an integer, 2.5 is not
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            return None
        expected = "an integer" if name in INT_COLUMNS else "a number"
    elif name in LIST_COLUMNS:
        is_list = (
            pa.types.is_list(kind)
            or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)
            or pa.types.is_list_view(kind)
            or pa.types.is_large_list_view(kind)
        )
        if is_list and (_is_text(kind.value_type) or pa.types.is_null(kind.value_type)):
            return None
        expected = "a list of strings"
    else:
        if _is_text(kind):
            return None
        expected = "a string"
    return f"column has type {kind}, expected {expected}"


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
