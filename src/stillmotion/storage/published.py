"""Published videos: one folder per video, complete exactly when its metadata.json exists, made whole
before it is visible (staged and renamed on local disk; metadata.json written last everywhere).

    outputs = OutputStore("s3://bucket/run")   # videos, results.parquet, .logs/, .staging/, .leases/
    outputs.publish("v1", {"video.mp4": ..., "preview.png": ...}, metadata)
    outputs.is_complete("v1")
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil

from ..outputs import METADATA, metadata_bytes
from .fs import (
    TEMPORARY_PREFIX,
    Store,
    owner_tag,
    remove_abandoned,
    replace_folder,
    retried,
    subfolders,
)
from .leases import Leases, shard_lease

FAILURES = ".logs/{video_id}.json"  # a row's last failure on its own input: {"fingerprint", "reason"}


class OutputError(ValueError):
    """An output location that cannot take a video (a file, or a folder of something else)."""


class OutputStore(Store):
    """Published videos under `{video_id}/`, complete exactly when `{video_id}/metadata.json` exists;
    the leases of the rows and shards being made (`Leases`)."""

    # The batch flow's own calls (a lookup, a lease) are not stages that Prefect retries: they retry
    # transient storage errors themselves (see `retried`)

    def is_complete(self, video_id: str) -> bool:
        return retried(self.exists, f"{video_id}/{METADATA}")

    def complete_ids(self) -> set[str]:
        """The ids of every complete video, from one listing."""
        paths = retried(self.fs.glob, self.path(f"*/{METADATA}"))
        return {path.rsplit("/", 2)[-2] for path in paths}

    def publish(self, video_id: str, files: dict[str, bytes], metadata: dict) -> None:
        """Write a video's files, metadata.json last; on local disk stage and rename into place."""
        self._put_folder(video_id, lambda folder: self.write_folder(folder, files, metadata))

    def restore(self, video_id: str, files: dict[str, bytes]) -> None:
        """Put back a video's files as they were copied elsewhere (a shard's), its metadata.json among
        them, unchanged; written as `publish` writes (metadata.json last, staged on local disk)."""
        self._put_folder(video_id, lambda folder: self._write_files(folder, files))

    def _put_folder(self, video_id: str, write) -> None:
        """`write(folder)`, then the folder is the video's. A video's staging folders live under
        `.staging/{video_id}/`, a folder of that id alone (ids hold no `/`), so clearing what a killed
        run left never touches another video's."""
        if not self.local:
            write(video_id)
            return
        staging_root = self.path(f".staging/{video_id}")
        remove_abandoned(staging_root, "")  # left by a killed run; never a live run's
        staging = f".staging/{video_id}/{owner_tag()}"
        try:
            write(staging)
        except BaseException:  # a full disk: no partial folder left behind
            shutil.rmtree(self.path(staging), ignore_errors=True)
            raise
        replace_folder(self.path(staging), self.path(video_id))
        with contextlib.suppress(OSError):  # another publish of this id may be staging
            os.rmdir(staging_root)

    def write_folder(self, folder: str, files: dict[str, bytes], metadata: dict) -> None:
        """Write files into `folder` ("" for the root), metadata.json last; an old one goes first."""
        self._write_files(folder, {**files, METADATA: metadata_bytes(metadata, files)})

    def _write_files(self, folder: str, files: dict[str, bytes]) -> None:
        """Write `files` (metadata.json among them) into `folder`: an old metadata.json is removed
        first, the new one written once every other file is in place at its size."""
        prefix = f"{folder}/" if folder else ""
        others = {name: data for name, data in files.items() if name != METADATA}
        if self.exists(prefix + METADATA):  # the old version stops being complete before any change
            self.fs.rm_file(self.path(prefix + METADATA))
        for name, data in others.items():
            self.write_bytes(prefix + name, data)
        for name, data in others.items():  # the marker only once every file is in place, whole
            if self.fs.info(self.path(prefix + name))["size"] != len(data):
                raise OSError(errno.EIO, f"{self.url_of(prefix + name)} is not as written")
        self.write_bytes(prefix + METADATA, files[METADATA])

    @functools.cached_property
    def leases(self) -> Leases:
        """The leases under `.leases/` (rows by video id, shards by `shard_lease`)."""
        return Leases(self)

    def take_lease(self, video_id: str) -> bool:
        """Claim a row for this process, so that two runs on one output split the work: True if taken
        (then `release_lease`), False while another live run holds it (see `Leases.take`)."""
        return self.leases.take(video_id)

    def release_lease(self, video_id: str) -> None:
        """Give a row back (see `Leases.release`)."""
        self.leases.release(video_id)

    def take_shard_lease(self, shard: str) -> bool:
        """Claim the packing of a shard (`00000`), so that no two runs pack it: True if taken (then
        `release_shard_lease`), False while another live run holds it."""
        return self.leases.take(shard_lease(shard))

    def release_shard_lease(self, shard: str) -> None:
        self.leases.release(shard_lease(shard))

    def renew_leases(self) -> int:
        """Touch every lease this process holds on this output (see `Leases.renew`, `LeaseKeeper`)."""
        return self.leases.renew()

    def clean_leftovers(self) -> int:
        """Delete what killed runs left: their leases and, on local disk, temporary files and staging
        folders (see `abandoned`: never those of a live run). Returns how many. A run killed between
        publishing a video and giving its row back leaves a lease no later run takes over (they find
        the row complete): it goes here."""
        removed = self.leases.remove_abandoned()
        if not self.local:
            return removed  # object stores write whole objects: no partial file is left
        removed += remove_abandoned(self.root, TEMPORARY_PREFIX) + remove_abandoned(
            self.path(".logs"), TEMPORARY_PREFIX
        )
        for folder in subfolders(self.path(".staging")):
            removed += remove_abandoned(folder, "")
            with contextlib.suppress(OSError):  # still in use
                os.rmdir(folder)
        return removed

    def write_log(self, video_id: str, text: str) -> None:
        self.write_bytes(f".logs/{video_id}.txt", text.encode())

    def clear_log(self, video_id: str) -> None:
        """Remove the failure log of a row that has now succeeded, and its failure record."""
        if self.exists(f".logs/{video_id}.txt"):
            self.fs.rm_file(self.path(f".logs/{video_id}.txt"))
        self.forget_failure(video_id)

    def forget_failure(self, video_id: str) -> None:
        """Remove the record of a row's failure on its own input (FAILURES)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(FAILURES.format(video_id=video_id)))

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
    remove_abandoned(parent, f".{name}.staging-")  # left by a killed generate
    staging = f".{name}.staging-{owner_tag()}"
    try:
        store.write_folder(staging, files, metadata)
        replace_folder(store.path(staging), store.path(name))
    finally:
        shutil.rmtree(store.path(staging), ignore_errors=True)
