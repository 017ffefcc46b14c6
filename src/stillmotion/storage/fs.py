"""One root object per fsspec URL, and what every store shares: atomic writes, retries of transient
errors, and the owner tags that tell a live process's temporary files from a killed one's.

    store = Store("s3://bucket/run")     # every path relative to the root
    store.write_bytes("a/b.json", data)  # a reader sees the old file or the whole new one
    retried(store.exists, "a/b.json")    # tried again on a dropped connection or a 503
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import os
import shutil
import socket
import time
import uuid

import fsspec
import fsspec.asyn
import fsspec.config

STORAGE_OPTIONS_ENV = "STILLMOTION_STORAGE_OPTIONS"
TEMPORARY_PREFIX = ".tmp-"  # a local file being written; renamed into place when whole
ABANDONED_AFTER_S = 3600  # a temporary file, staging folder or lease of another machine, untouched this long
FLOW_RETRY_DELAYS = [1.0, 4.0, 10.0]  # seconds before each new try of a flow-level storage call
EXISTS_BATCH = 64  # lookups in flight at once in `Store.present` (object stores)

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
    timeout, a 503), looking through its causes; never a missing or unreadable file, a full disk, an
    error that says it is not (`transient = False`: a damaged artifact) or a user's bad input."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "transient", None) is False:
            return False
        if isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError):
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


def names_this_process(tag: str) -> bool:
    """Whether an `owner_tag` names this very process."""
    parts = tag.split(".", 2)
    return len(parts) == 3 and parts[1] == str(os.getpid()) and parts[2] == machine_id()


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

    def present(self, relatives: list[str]) -> set[str]:
        """Which of `relatives` exist: one call, the lookups concurrent on object stores."""
        paths = [self.path(relative) for relative in relatives]
        if isinstance(self.fs, fsspec.asyn.AsyncFileSystem):
            found = fsspec.asyn.sync(self.fs.loop, _exist_all, self.fs, paths)
        else:
            found = [self.fs.exists(path) for path in paths]
        return {relative for relative, there in zip(relatives, found, strict=True) if there}

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

    def create_exclusive(self, relative: str, data: bytes) -> bool:
        """Create a file only if none is there: True if this call created it. O_EXCL on local disk; a
        conditional write (If-None-Match) where the filesystem offers one; elsewhere a check, then a
        write (two writers can race there)."""
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
            except BaseException:  # a full disk: no empty file left to block what it claims
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


def modified_time(info: dict) -> float:
    """A file's modification time from fsspec's info (a number locally, a datetime on object stores)."""
    value = info.get("mtime", info.get("LastModified", info.get("created", 0)))
    return value.timestamp() if hasattr(value, "timestamp") else float(value or 0)


def subfolders(folder: str) -> list[str]:
    """The folders in a local folder (none when it does not exist)."""
    try:
        return [entry.path for entry in os.scandir(folder) if entry.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


async def _exist_all(fs: fsspec.asyn.AsyncFileSystem, paths: list[str]) -> list[bool]:
    found: list[bool] = []
    for start in range(0, len(paths), EXISTS_BATCH):
        found += await asyncio.gather(*(fs._exists(path) for path in paths[start : start + EXISTS_BATCH]))
    return found


def _error_code(error: BaseException) -> str | None:
    """The S3 error code behind an error s3fs translated (botocore's ClientError is its cause)."""
    while error is not None:
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code"))
        error = error.__cause__ or error.__context__
    return None


def _protocols(fs) -> tuple:
    protocol = fs.protocol
    return protocol if isinstance(protocol, tuple) else (protocol,)
