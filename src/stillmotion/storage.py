"""fsspec storage: one root object per URL, content-addressed artifacts, atomic video publishing.

    outputs = OutputStore("s3://bucket/run")        # videos, results.parquet, .logs/, .staging/
    artifacts = ArtifactStore("s3://bucket/run/.cache/artifacts")
    key = artifact_key("invert", image_sha256=..., caption=..., model=..., steps=50)
    artifacts.put_tensors(key, {"inverted_noise": x_T}); artifacts.get_tensors(key)

Tensors are stored as safetensors, images as PNG, the rest as JSON: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid

import fsspec
import fsspec.config
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from . import ALGORITHM_VERSION
from .outputs import METADATA, metadata_bytes

STORAGE_OPTIONS_ENV = "STILLMOTION_STORAGE_OPTIONS"


class OutputError(ValueError):
    """An output location that cannot take a video (a file, or a folder of something else)."""


def protocol_of(url: str) -> str:
    """`s3` for s3://bucket/key, `file` for local paths."""
    protocol = fsspec.core.split_protocol(url)[0]
    return "file" if protocol in (None, "file", "local") else protocol


def configure_storage(options_by_protocol: dict[str, dict] | None = None) -> None:
    """Apply fsspec options per protocol, process-wide: every filesystem of that protocol gets them.

    They come from the argument or from $STILLMOTION_STORAGE_OPTIONS (JSON: {"s3": {...}}), so
    endpoints and credentials are never flow parameters, task inputs or Prefect block settings.
    """
    if options_by_protocol is None:
        text = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
        options_by_protocol = json.loads(text) if text else {}
    for protocol, options in options_by_protocol.items():
        fsspec.config.conf.setdefault(protocol, {}).update(options)


def artifact_key(kind: str, **inputs) -> str:
    """`kind/<hash>` of the true inputs of an artifact plus the algorithm version."""
    canonical = json.dumps(
        {"kind": kind, "algorithm": ALGORITHM_VERSION, **inputs}, sort_keys=True, default=str
    )
    return f"{kind}/{hashlib.sha256(canonical.encode()).hexdigest()[:40]}"


class Store:
    """Every path relative to one root URL on one fsspec filesystem."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        # a local path is made absolute, so URLs written to results mean the same from any folder
        self.url = os.path.abspath(url) if "://" not in url and "::" not in url else url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.local = "file" in _protocols(self.fs)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def url_of(self, relative: str) -> str:
        return f"{self.url}/{relative}"

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write atomically: a reader sees the old file or the whole new one, never a part."""
        target = self.path(relative)
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.local:
            temporary = f"{parent}/.tmp-{uuid.uuid4().hex}"
            with open(temporary, "wb") as handle:
                handle.write(data)
            os.replace(temporary, target)
        else:  # an object store's PUT is atomic already
            self.fs.pipe_file(target, data)

    def read_json(self, relative: str):
        return json.loads(self.read_bytes(relative))

    def write_json(self, relative: str, value) -> None:
        self.write_bytes(relative, json.dumps(value, indent=2, ensure_ascii=False, default=str).encode())


def replace_folder(staged: str, final: str) -> None:
    """Move a complete local folder into place; an existing one is swapped out first, then removed.

    At every moment `final` is either the old folder or the new one, never a mix of both.
    """
    if not os.path.lexists(final):
        os.replace(staged, final)
        return
    retired = f"{staged}.old"
    os.replace(final, retired)
    os.replace(staged, final)
    shutil.rmtree(retired, ignore_errors=True)


def _protocols(fs) -> tuple:
    protocol = fs.protocol
    return protocol if isinstance(protocol, tuple) else (protocol,)


class ArtifactStore(Store):
    """Content-addressed intermediates: `<kind>/<hash>.<ext>`, written once, read many times."""

    def has(self, key: str, ext: str) -> bool:
        return self.exists(f"{key}.{ext}")

    def put_tensors(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        self.write_bytes(
            f"{key}.safetensors", save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        )

    def get_tensors(self, key: str) -> dict[str, torch.Tensor]:
        return load_tensors(self.read_bytes(f"{key}.safetensors"))

    def put_json(self, key: str, value) -> None:
        self.write_json(f"{key}.json", value)

    def get_json(self, key: str):
        return self.read_json(f"{key}.json")

    def put_file(self, key: str, ext: str, data: bytes) -> None:
        self.write_bytes(f"{key}.{ext}", data)

    def get_file(self, key: str, ext: str) -> bytes:
        return self.read_bytes(f"{key}.{ext}")


class OutputStore(Store):
    """Published videos under `{video_id}/`, complete exactly when `{video_id}/metadata.json` exists."""

    def is_complete(self, video_id: str) -> bool:
        return self.exists(f"{video_id}/{METADATA}")

    def complete_ids(self) -> set[str]:
        """The ids of every complete video, from one listing."""
        return {path.rsplit("/", 2)[-2] for path in self.fs.glob(self.path(f"*/{METADATA}"))}

    def publish(self, video_id: str, files: dict[str, bytes], metadata: dict) -> None:
        """Write a video's files, metadata.json last; on local disk stage and rename into place.

        A video's staging folders live under `.staging/{video_id}/`, a folder of that id alone
        (ids hold no `/`), so clearing what a killed run left never touches another video's.
        """
        if self.local:
            staging_root = self.path(f".staging/{video_id}")
            for stale in self.fs.glob(f"{staging_root}/*"):  # left by a killed run
                self.fs.rm(stale, recursive=True)
            staging = f".staging/{video_id}/{uuid.uuid4().hex[:8]}"
            self.write_folder(staging, files, metadata)
            replace_folder(self.path(staging), self.path(video_id))
            with contextlib.suppress(OSError):  # another publish of this id may be staging
                os.rmdir(staging_root)
        else:
            self.write_folder(video_id, files, metadata)

    def write_folder(self, folder: str, files: dict[str, bytes], metadata: dict) -> None:
        """Write files into `folder` ("" for the root), metadata.json last; an old one goes first."""
        prefix = f"{folder}/" if folder else ""
        if self.exists(prefix + METADATA):  # the old version stops being complete before any change
            self.fs.rm_file(self.path(prefix + METADATA))
        for name, data in files.items():
            self.write_bytes(prefix + name, data)
        self.write_bytes(prefix + METADATA, metadata_bytes(metadata, files))

    def write_log(self, video_id: str, text: str) -> None:
        self.write_bytes(f".logs/{video_id}.txt", text.encode())

    def clear_log(self, video_id: str) -> None:
        """Remove the failure log of a row that has now succeeded."""
        if self.exists(f".logs/{video_id}.txt"):
            self.fs.rm_file(self.path(f".logs/{video_id}.txt"))

    def read_log_reason(self, video_id: str) -> str | None:
        """The first line of a failed row's log: its one-line reason."""
        try:
            return self.read_bytes(f".logs/{video_id}.txt").decode(errors="replace").split("\n", 1)[0]
        except FileNotFoundError:
            return None


def check_video_folder(path: str) -> None:
    """Refuse an `--out` that is a file, or a non-empty folder that is not a video of ours."""
    if os.path.isdir(path):
        if os.listdir(path) and not os.path.exists(os.path.join(path, METADATA)):
            raise OutputError(
                f"--out {path} is a folder that is not a stillmotion video (no {METADATA}): "
                "choose a new or empty folder"
            )
    elif os.path.lexists(path):
        raise OutputError(f"--out {path} exists and is not a folder")


def publish_video_folder(path: str, files: dict[str, bytes], metadata: dict) -> None:
    """Write one video's folder whole (generate's --out): staged beside it, then swapped into place,
    so files of an earlier video there never survive next to the new ones."""
    check_video_folder(path)
    parent, name = os.path.split(os.path.abspath(path))
    store = OutputStore(parent)
    staging = f".{name}.staging-{uuid.uuid4().hex[:8]}"
    try:
        store.write_folder(staging, files, metadata)
        replace_folder(store.path(staging), store.path(name))
    finally:
        shutil.rmtree(store.path(staging), ignore_errors=True)
