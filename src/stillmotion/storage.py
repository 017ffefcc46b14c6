"""fsspec storage: one root object per URL, content-addressed artifacts, atomic video publishing.

    outputs = OutputStore("s3://bucket/run")        # videos, results.parquet, .logs/, .staging/
    artifacts = ArtifactStore("s3://bucket/run/.cache/artifacts")
    key = artifact_key("invert", image_sha256=..., caption=..., model=..., steps=50)
    artifacts.put_tensors(key, {"inverted_noise": x_T}, record={"seconds": 1.2})
    artifacts.get_tensors(key)   # checked against its sha256; DamagedArtifact (and deleted) if not

Tensors are stored as safetensors, images as PNG, the rest as JSON: nothing is unpickled. Every
artifact's data is checked against the sha256 recorded with it on every read.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING

import fsspec
import fsspec.config

from . import ALGORITHM_VERSION
from .outputs import METADATA, metadata_bytes, sha256

if TYPE_CHECKING:  # torch and safetensors load on first use: the manifest code never needs them
    import torch

STORAGE_OPTIONS_ENV = "STILLMOTION_STORAGE_OPTIONS"
TEMPORARY_PREFIX = ".tmp-"  # a local file being written; renamed into place when whole
LEASES = ".leases"  # one file per row being made, naming the process making it
_HELD_LEASES: dict[str, str] = {}  # lease URL -> this process's tag in it
_LEASE_LOCK = threading.Lock()  # a lease is never renewed while it is being given back
CONCURRENT_WRITE_S = 0.2  # how long a reader waits before calling a mismatch damage
ABANDONED_AFTER_S = 3600  # a temporary file, staging folder or lease of another machine, untouched this long
LEASE_RENEW_S = ABANDONED_AFTER_S / 6  # how often a run touches the leases it holds (LeaseKeeper)


# what a storage failure that may pass when tried again looks like: s3fs reports a 503 or "SlowDown" as
# EBUSY; the rest are dropped, refused or timed-out connections
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EBUSY,
        errno.EAGAIN,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    }
)
TRANSIENT_TYPES = frozenset(  # by name: botocore's and aiohttp's, without importing either
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ResponseStreamingError",
        "ServerDisconnectedError",
        "ClientConnectorError",
        "ClientOSError",
        "ClientPayloadError",
    }
)
TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "500", "503"}
)


def is_transient(error: BaseException) -> bool:
    """Whether a failure is a storage error that may pass if tried again (a dropped connection, a
    timeout, a 503), looking through its causes; never a missing or unreadable file, a full disk, a
    damaged artifact or a user's bad input."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DamagedArtifact | FileNotFoundError | PermissionError | IsADirectoryError):
            return False
        if isinstance(error, ConnectionError | TimeoutError) or type(error).__name__ in TRANSIENT_TYPES:
            return True
        if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
            return True
        code = getattr(error, "response", None)
        if isinstance(code, dict) and str(code.get("Error", {}).get("Code")) in TRANSIENT_CODES:
            return True  # botocore's ClientError
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return False


class StorageError(OSError):
    """A storage failure that names what it was reading or writing; keeps the errno of its cause (so
    `is_transient` still tells a 503 from a missing file)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


@functools.cache
def machine_id() -> str:
    """Where a pid means one process: the host name and, on Linux, the pid namespace (containers that
    share a host name do not share pids)."""
    try:
        namespace = f"~{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}{namespace}"


def owner_tag() -> str:
    """`{token}.{pid}.{machine}`: names a temporary file, staging folder or lease after its process."""
    return f"{uuid.uuid4().hex[:8]}.{os.getpid()}.{machine_id()}"


def abandoned(name: str, mtime: float) -> bool:
    """Whether what a process named with `owner_tag` (under any prefix) is provably left behind: its
    process, on this machine, is gone; or it is another machine's and untouched for ABANDONED_AFTER_S."""
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2] == machine_id():
        return not _alive(int(parts[1]))
    return time.time() - mtime > ABANDONED_AFTER_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_abandoned(folder: str, prefix: str) -> int:
    """Delete the abandoned entries named `prefix` + owner_tag() in a local folder; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            if not abandoned(entry.name.removeprefix(prefix), entry.stat(follow_symlinks=False).st_mtime):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:  # its owner, or another cleaner, was quicker
            continue
    return removed


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
        if self.local:

            def write(temporary: str) -> None:
                with open(temporary, "wb") as handle:
                    handle.write(data)

            self._replace_local(relative, write)
        else:  # an object store's PUT is atomic already
            self.fs.makedirs(self.path(relative).rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(self.path(relative), data)

    def put_file(self, local_path: str, relative: str) -> None:
        """Upload a local file, atomically as `write_bytes` (object stores: one PUT, or a multipart
        upload, which appears only once complete)."""
        if self.local:
            self._replace_local(relative, lambda temporary: shutil.copyfile(local_path, temporary))
        else:
            self.fs.makedirs(self.path(relative).rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(local_path, self.path(relative))

    def _replace_local(self, relative: str, write) -> None:
        """`write(temporary)` beside the target, then rename it into place."""
        target = self.path(relative)
        parent = target.rsplit("/", 1)[0]
        os.makedirs(parent, exist_ok=True)
        temporary = f"{parent}/{TEMPORARY_PREFIX}{owner_tag()}"
        try:
            write(temporary)
            os.replace(temporary, target)
        except BaseException:  # a full disk, a kill signal: no partial temporary file stays behind
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

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


def _error_code(error: BaseException) -> str | None:
    """The S3 error code behind an error s3fs translated (botocore's ClientError is its cause)."""
    while error is not None:
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code"))
        error = error.__cause__ or error.__context__
    return None


FLOW_RETRY_DELAYS = [1.0, 4.0, 10.0]  # seconds before each new try of a flow-level storage call


def retried(call, *args, **kwargs):
    """`call(*args, **kwargs)`, tried again after each of FLOW_RETRY_DELAYS while it fails on a
    transient storage error (`is_transient`); any other error, or the last one, is raised."""
    for delay in [*FLOW_RETRY_DELAYS, None]:
        try:
            return call(*args, **kwargs)
        except Exception as error:
            if delay is None or not is_transient(error):
                raise
        time.sleep(delay)


def _mtime(info: dict) -> float:
    """A file's modification time from fsspec's info (a number locally, a datetime on object stores)."""
    value = info.get("mtime", info.get("LastModified", info.get("created", 0)))
    return value.timestamp() if hasattr(value, "timestamp") else float(value or 0)


def _subfolders(folder: str) -> list[str]:
    try:
        return [entry.path for entry in os.scandir(folder) if entry.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _protocols(fs) -> tuple:
    protocol = fs.protocol
    return protocol if isinstance(protocol, tuple) else (protocol,)


class DamagedArtifact(RuntimeError):
    """An artifact that cannot be read, or whose data no longer matches the sha256 recorded with it.

    It has been deleted when this is raised: the stage that makes it runs again on a retry.
    """


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
        return sum(remove_abandoned(folder, TEMPORARY_PREFIX) for folder in _subfolders(self.root))

    def discard(self, key: str, ext: str | None) -> None:
        """Delete an artifact, data first (so it stops counting as present), then its record."""
        for name in ([f"{key}.{ext}"] if ext else []) + [f"{key}.json"]:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path(name))

    def _damaged(self, key: str, ext: str | None, why: str) -> DamagedArtifact:
        self.discard(key, ext)
        return DamagedArtifact(f"damaged artifact {key}: {why}; deleted, it is recomputed on a retry")


class OutputStore(Store):
    """Published videos under `{video_id}/`, complete exactly when `{video_id}/metadata.json` exists."""

    # The batch flow's own calls (a lookup, a lease) are not stages that Prefect retries: they retry
    # transient storage errors themselves (see `retried`)

    def is_complete(self, video_id: str) -> bool:
        return retried(self.exists, f"{video_id}/{METADATA}")

    def complete_ids(self) -> set[str]:
        """The ids of every complete video, from one listing."""
        paths = retried(self.fs.glob, self.path(f"*/{METADATA}"))
        return {path.rsplit("/", 2)[-2] for path in paths}

    def publish(self, video_id: str, files: dict[str, bytes], metadata: dict) -> None:
        """Write a video's files, metadata.json last; on local disk stage and rename into place.

        A video's staging folders live under `.staging/{video_id}/`, a folder of that id alone
        (ids hold no `/`), so clearing what a killed run left never touches another video's.
        """
        if self.local:
            staging_root = self.path(f".staging/{video_id}")
            remove_abandoned(staging_root, "")  # left by a killed run; never a live run's
            staging = f".staging/{video_id}/{owner_tag()}"
            try:
                self.write_folder(staging, files, metadata)
            except BaseException:  # a full disk: no partial folder left behind
                shutil.rmtree(self.path(staging), ignore_errors=True)
                raise
            replace_folder(self.path(staging), self.path(video_id))
            with contextlib.suppress(OSError):  # another publish of this id may be staging
                os.rmdir(staging_root)
        else:
            self.write_folder(video_id, files, metadata)

    def take_lease(self, video_id: str) -> bool:
        """See `_take_lease`; transient storage errors are tried again (a lease this process made in a
        call whose answer was lost is taken back, see `_leaked_here`)."""
        return retried(self._take_lease, video_id)

    def _take_lease(self, video_id: str) -> bool:
        """Claim a row for this process, so that two runs on one output split the work: True if taken
        (then `release_lease`), False while another live run holds it. The lease is `.leases/{video_id}`,
        created exclusively (O_EXCL on local disk; a conditional write, If-None-Match, where the
        filesystem offers one); a holder that is gone loses it (see `abandoned`)."""
        name, owner = f"{LEASES}/{video_id}", owner_tag()
        for _ in range(2):
            if self._create_exclusive(name, owner.encode()):
                if self._lease_holder(name) != owner:  # a store that ignored the exclusive write
                    return False
                _HELD_LEASES[self.url_of(name)] = owner
                return True
            holder = self._lease_holder(name)
            if holder is None:  # released meanwhile: try again
                continue
            try:
                mtime = _mtime(self.fs.info(self.path(name)))
            except FileNotFoundError:
                continue
            if not (abandoned(holder, mtime) or self._leaked_here(name, holder)):
                return False
            if self._lease_holder(name) == holder:  # still the one found gone, not a newer claim
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self.path(name))
        return False

    def release_lease(self, video_id: str) -> None:
        """Give a row back; only this process's own lease is deleted (never one taken over since). A
        storage error that outlasts the retries leaves the lease to expire (see `abandoned`)."""
        url = self.url_of(f"{LEASES}/{video_id}")
        try:
            retried(self._release_lease, video_id)
        except Exception:  # noqa: BLE001 - never fails a row: the lease is only left to expire
            pass
        finally:
            with _LEASE_LOCK:
                _HELD_LEASES.pop(url, None)

    def _release_lease(self, video_id: str) -> None:
        name = f"{LEASES}/{video_id}"
        with _LEASE_LOCK:
            owner = _HELD_LEASES.get(self.url_of(name))
            if owner is not None and self._lease_holder(name) == owner:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self.path(name))

    def renew_leases(self) -> int:
        """Touch every lease this process holds on this output, so that a row that takes longer than
        ABANDONED_AFTER_S is not taken over by another machine; returns how many were renewed. A lease
        another process took over meanwhile (it found ours stale) is left alone."""
        prefix, renewed = self.url_of(LEASES) + "/", 0
        for url, owner in list(_HELD_LEASES.items()):
            if not url.startswith(prefix):
                continue
            name = f"{LEASES}/{url.removeprefix(prefix)}"
            with _LEASE_LOCK:
                if _HELD_LEASES.get(url) != owner or self._lease_holder(name) != owner:
                    continue
                try:
                    if self.local:
                        os.utime(self.path(name))
                    else:  # an object's modification time changes only when it is written again
                        self.fs.pipe_file(self.path(name), owner.encode())
                except FileNotFoundError:
                    continue
                renewed += 1
        return renewed

    def _lease_holder(self, name: str) -> str | None:
        try:
            return self.read_bytes(name).decode(errors="replace").strip()
        except FileNotFoundError:
            return None

    def _leaked_here(self, name: str, holder: str) -> bool:
        """A lease naming this very process that it no longer holds (left by an interrupted call)."""
        parts = holder.split(".", 2)
        mine = len(parts) == 3 and parts[1] == str(os.getpid()) and parts[2] == machine_id()
        return mine and _HELD_LEASES.get(self.url_of(name)) != holder

    def _create_exclusive(self, relative: str, data: bytes) -> bool:
        target = self.path(relative)
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        if self.local:
            try:
                descriptor = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(data)
            except BaseException:  # a full disk: no empty lease left to block the row
                with contextlib.suppress(OSError):
                    os.unlink(target)
                raise
            return True
        try:
            self.fs.pipe_file(target, data, mode="create")
        except FileExistsError:
            return False
        except TypeError:  # a filesystem without exclusive writes: check, then write (racy)
            if self.fs.exists(target):
                return False
            self.fs.pipe_file(target, data)
        # S3: 412 PreconditionFailed, or 409 for a concurrent conditional write. SeaweedFS answers 412
        # without AWS's Condition field, so s3fs raises OSError(EINVAL) there, not FileExistsError
        except OSError as error:
            if _error_code(error) in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}:
                return False
            raise
        return True

    def clean_leftovers(self) -> int:
        """Delete what killed runs left: their leases and, on local disk, temporary files and staging
        folders (see `abandoned`: never those of a live run). Returns how many."""
        removed = self._remove_abandoned_leases()
        if not self.local:
            return removed  # object stores write whole objects: no partial file is left
        removed += remove_abandoned(self.root, TEMPORARY_PREFIX) + remove_abandoned(
            self.path(".logs"), TEMPORARY_PREFIX
        )
        for folder in _subfolders(self.path(".staging")):
            removed += remove_abandoned(folder, "")
            with contextlib.suppress(OSError):  # still in use
                os.rmdir(folder)
        return removed

    def _remove_abandoned_leases(self) -> int:
        """Delete the leases whose holder is gone. A run killed between publishing a video and giving
        its row back leaves a lease no later run takes over (they find the row complete). One listing;
        a lease that cannot be read or deleted now is left to the next run."""
        try:
            paths = retried(self.fs.find, self.path(LEASES))
        except Exception:  # noqa: BLE001 - housekeeping never stops a run
            return 0
        removed = 0
        for path in paths:
            name = f"{LEASES}/{path.rsplit('/', 1)[-1]}"
            try:
                holder = self._lease_holder(name)
                if holder is None or not abandoned(holder, _mtime(self.fs.info(path))):
                    continue
                if self._lease_holder(name) == holder:  # still the one found gone, not a newer claim
                    self.fs.rm_file(path)
                    removed += 1
            except Exception:  # noqa: BLE001 - released or taken meanwhile, or a storage error
                continue
        return removed

    def write_folder(self, folder: str, files: dict[str, bytes], metadata: dict) -> None:
        """Write files into `folder` ("" for the root), metadata.json last; an old one goes first."""
        prefix = f"{folder}/" if folder else ""
        if self.exists(prefix + METADATA):  # the old version stops being complete before any change
            self.fs.rm_file(self.path(prefix + METADATA))
        for name, data in files.items():
            self.write_bytes(prefix + name, data)
        for name, data in files.items():  # the marker only once every file is in place, whole
            if self.fs.info(self.path(prefix + name))["size"] != len(data):
                raise OSError(errno.EIO, f"{self.url_of(prefix + name)} is not as written")
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
    remove_abandoned(parent, f".{name}.staging-")  # left by a killed generate
    staging = f".{name}.staging-{owner_tag()}"
    try:
        store.write_folder(staging, files, metadata)
        replace_folder(store.path(staging), store.path(name))
    finally:
        shutil.rmtree(store.path(staging), ignore_errors=True)


class LeaseKeeper:
    """While open, renews the leases this process holds on `outputs` every LEASE_RENEW_S seconds, in a
    daemon thread (a renewal that fails is tried again at the next interval)."""

    def __init__(self, outputs: OutputStore):
        self.outputs, self._stop = outputs, threading.Event()
        self._thread = threading.Thread(target=self._keep, name="stillmotion-leases", daemon=True)

    def _keep(self) -> None:
        while not self._stop.wait(LEASE_RENEW_S):
            with contextlib.suppress(Exception):  # a flaky store: the lease is still hours from stale
                self.outputs.renew_leases()

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
