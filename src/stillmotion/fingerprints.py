"""Row fingerprints: what made a published video, so a rerun tells a current video from a stale one.

    identities = source_identities([request.image for request in requests])   # no bytes read
    fingerprint = row_fingerprint(resolved_request, model_identity(info), identities[request.image],
                                  captioner=captioner_fingerprint(info.path))

A fingerprint hashes the resolved parameters (every field but the execution options), the prompts,
the caption given (or the captioner's identity, when BLIP makes it), the source (image URL plus its
size and ETag or modification time as the store reports them; synthetic: the source prompt), the
model's revision and the algorithm version. A video is current for a row only while its
metadata.json records the row's fingerprint. Light: no torch, no Prefect.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import fsspec

from . import ALGORITHM_VERSION
from .storage.fs import modified_time
from .storage.published import FAILURES  # noqa: F401 - where the lookup reads it

LISTED_FROM = 4  # a folder holding at least this many of the sources is listed once, not asked per file


def _identity(info: dict) -> dict:
    """What the store says of a file without reading it: its size and its ETag, else its mtime."""
    if info.get("type") == "directory":
        return {"type": "directory"}
    etag = info.get("ETag") or info.get("etag")
    return {"size": info.get("size"), **({"etag": etag} if etag else {"mtime": modified_time(info)})}


def source_identities(urls) -> dict[str, dict]:
    """{url: identity} of image paths or URLs (see `_identity`; {"missing": True} for none there), from
    one listing per folder that holds several of them, else one metadata call per file."""
    by_folder: dict[tuple, list] = defaultdict(list)
    for url in set(urls):
        fs, path = fsspec.core.url_to_fs(url)
        by_folder[(id(fs), path.rsplit("/", 1)[0])].append((fs, url, path))
    identities = {}
    for (_, folder), entries in by_folder.items():
        fs = entries[0][0]
        listed = {}
        if len(entries) >= LISTED_FROM:
            try:
                listed = {info["name"].rstrip("/"): info for info in fs.ls(folder, detail=True)}
            except (OSError, ValueError):  # not listable: ask per file
                listed = {}
        for _, url, path in entries:
            info = listed.get(path.rstrip("/"))
            if info is None:
                try:
                    info = fs.info(path)
                except FileNotFoundError:
                    identities[url] = {"missing": True}
                    continue
                except OSError as error:  # unreadable now: a fingerprint that matches no earlier one
                    identities[url] = {"error": type(error).__name__}
                    continue
            identities[url] = _identity(info)
    return identities


def model_identity(model_id: str, revision: str, size: int, hub: bool) -> dict:
    """The model in a fingerprint: its revision (and hub id), never how a local folder was spelled."""
    return {"model": model_id if hub else None, "revision": revision, "size": size}


def captioner_fingerprint(model_path: str | None) -> str:
    """The captioner that captions a model's real-mode rows: its local folder's revision, else the hub id
    (whose revision is not known offline; a new hub snapshot is not noticed)."""
    from .models.identity import DEFAULT_CAPTIONER, captioner_identity

    if model_path is not None and (Path(model_path) / "captioner").is_dir():
        return captioner_identity(model_path)[2]
    return DEFAULT_CAPTIONER


def row_fingerprint(request, model: dict, source: dict | None, captioner: str | None = None) -> str:
    """The fingerprint of a resolved request (see the module docstring)."""
    blip = not request.synthetic and not request.caption
    canonical = json.dumps(
        {
            "algorithm": ALGORITHM_VERSION,
            "params": request.params.fingerprint_fields(),
            "prompts": list(request.prompts),
            "caption": request.caption,
            "captioner": captioner if blip else None,
            "source_prompt": request.source_prompt,
            "image": request.image,
            "source": source if request.image is not None else None,
            "model": model,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]
