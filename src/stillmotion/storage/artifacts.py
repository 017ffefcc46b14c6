"""Content-addressed intermediates: each artifact named by a hash of its true inputs, its data checked
against the sha256 recorded with it on every read.

    artifacts = ArtifactStore("s3://bucket/run/.cache/artifacts")
    key = artifact_key("invert", image_sha256=..., caption=..., model=..., steps=50)
    artifacts.put_tensors(key, {"inverted_noise": x_T}, record={"seconds": 1.2})
    artifacts.get_tensors(key)   # checked against its sha256; DamagedArtifact (and deleted) if not

Tensors are stored as safetensors, images as PNG, the rest as JSON: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from typing import TYPE_CHECKING

from .. import ALGORITHM_VERSION
from ..outputs import sha256
from .fs import TEMPORARY_PREFIX, Store, remove_abandoned, subfolders

if TYPE_CHECKING:  # torch and safetensors load on first use: the manifest code never needs them
    import torch

CONCURRENT_WRITE_S = 0.2  # how long a reader waits before calling a mismatch damage


def artifact_key(kind: str, **inputs) -> str:
    """`kind/<hash>` of the true inputs of an artifact plus the algorithm version."""
    canonical = json.dumps(
        {"kind": kind, "algorithm": ALGORITHM_VERSION, **inputs}, sort_keys=True, default=str
    )
    return f"{kind}/{hashlib.sha256(canonical.encode()).hexdigest()[:40]}"


class DamagedArtifact(RuntimeError):
    """An artifact that cannot be read, or whose data no longer matches the sha256 recorded with it.

    It has been deleted when this is raised: the stage that makes it runs again on a retry.
    """

    transient = False  # never a storage error to try again as it is (see fs.is_transient)


class ArtifactStore(Store):
    """Content-addressed intermediates: `<kind>/<hash>.<ext>` and its JSON sidecar `<kind>/<hash>.json`.

    The sidecar (the stage's record, plus the sha256 and size of the data) is written first and the
    data last, so data present means the artifact is complete; every read of the data checks it
    against the sidecar, and a damaged or unreadable artifact is deleted and reported as DamagedArtifact.
    An artifact with no data file (the caption) is its sidecar alone.
    """

    def has(self, key: str, ext: str) -> bool:
        return self.exists(f"{key}.{ext}")

    def intact(self, key: str, ext: str) -> bool:
        """Whether the artifact exists and reads back whole (a damaged one is deleted)."""
        if not self.has(key, ext):
            return False
        try:
            self.get_json(key) if ext == "json" else self.get_file(key, ext)
        except DamagedArtifact:
            return False
        return True

    def put(self, key: str, ext: str, data: bytes, record: dict | None = None) -> None:
        self.write_json(f"{key}.json", {**(record or {}), "sha256": sha256(data), "bytes": len(data)})
        self.write_bytes(f"{key}.{ext}", data)  # written last: the artifact's marker

    def put_tensors(self, key: str, tensors: dict[str, torch.Tensor], record: dict | None = None) -> None:
        from safetensors.torch import save as save_tensors

        data = save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        self.put(key, "safetensors", data, record)

    def put_file(self, key: str, ext: str, data: bytes, record: dict | None = None) -> None:
        self.put(key, ext, data, record)

    def put_json(self, key: str, value: dict) -> None:
        """An artifact that is its record alone."""
        self.write_json(f"{key}.json", value)

    def get_json(self, key: str) -> dict:
        try:
            return self.read_json(f"{key}.json")
        except (FileNotFoundError, ValueError) as error:
            raise self._damaged(key, None, f"its record is unreadable ({type(error).__name__})") from None

    def get_file(self, key: str, ext: str) -> bytes:
        try:
            record = self.get_json(key)
        except DamagedArtifact:
            self.discard(key, ext)  # data without its record cannot be checked: it goes too
            raise
        try:
            data = self.read_bytes(f"{key}.{ext}")
        except FileNotFoundError:
            raise self._damaged(key, ext, "its data is missing") from None
        if record.get("sha256") != sha256(data):
            # a concurrent write of the same artifact puts its record down before its data: read both
            # again once; damage is what still disagrees with an unchanged record
            time.sleep(CONCURRENT_WRITE_S)
            again = self.read_json(f"{key}.json") if self.exists(f"{key}.json") else {}
            data = self.read_bytes(f"{key}.{ext}") if self.exists(f"{key}.{ext}") else b""
            if again.get("sha256") != sha256(data):
                raise self._damaged(key, ext, f"its data does not match its sha256 ({len(data)} bytes)")
        return data

    def get_tensors(self, key: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load as load_tensors

        data = self.get_file(key, "safetensors")
        try:
            return load_tensors(data)
        except Exception as error:  # noqa: BLE001 - a sha256 match that still cannot load
            raise self._damaged(key, "safetensors", f"cannot load ({type(error).__name__})") from None

    def clean_leftovers(self) -> int:
        """Delete the temporary files killed writes left (local disk only); returns how many."""
        if not self.local:
            return 0
        return sum(remove_abandoned(folder, TEMPORARY_PREFIX) for folder in subfolders(self.root))

    def discard(self, key: str, ext: str | None) -> None:
        """Delete an artifact, data first (so it stops counting as present), then its record."""
        for name in ([f"{key}.{ext}"] if ext else []) + [f"{key}.json"]:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path(name))

    def _damaged(self, key: str, ext: str | None, why: str) -> DamagedArtifact:
        self.discard(key, ext)
        return DamagedArtifact(f"damaged artifact {key}: {why}; deleted, it is recomputed on a retry")
