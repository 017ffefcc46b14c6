"""Parquet manifests (DESIGN 4): read row by row into requests, validate, report bad rows one line each."""

from .reader import caption_needs, iter_manifest, manifest_summary, manifest_warnings, resolve_image
from .schema import (
    MANIFEST_COLUMNS,
    MANIFEST_SCHEMA,
    VIDEO_ID_PATTERN,
    ManifestError,
    ManifestRow,
    RowError,
    default_seed,
)
from .validate import check_rows, print_validation, validate_manifest

__all__ = [
    "MANIFEST_COLUMNS",
    "MANIFEST_SCHEMA",
    "VIDEO_ID_PATTERN",
    "ManifestError",
    "ManifestRow",
    "RowError",
    "caption_needs",
    "check_rows",
    "default_seed",
    "iter_manifest",
    "manifest_summary",
    "manifest_warnings",
    "print_validation",
    "resolve_image",
    "validate_manifest",
]
