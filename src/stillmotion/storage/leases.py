"""Leases: a name under `ROOT/.leases/` claimed by one live process at a time, so that runs on one
output split the work (rows) and never pack the same shard twice.

    leases = Leases(store)
    if leases.take("v1"):              # a row: its video id
        try: ...                       # LeaseKeeper renews it meanwhile
        finally: leases.release("v1")
    leases.take(shard_lease("00000"))  # a shard: `.shard-00000`, a name no video id can take

A lease is a file created exclusively that names its holder (`owner_tag`); its holder renews it every
LEASE_RENEW_S while it works (LeaseKeeper). A holder that is gone loses it: at once on its own machine
(its pid is gone), and on another machine once the lease has not been renewed for LEASE_STALE_S (a few
renewal periods: minutes), judged by the store's clock (the modification time the store gives a file
written now), not this machine's. A lease is only ever deleted by the process it names.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING

from . import fs
from .fs import (
    Store,
    modified_time,
    names_this_process,
    owner_tag,
    retried,
)

if TYPE_CHECKING:
    from .published import OutputStore

LEASES = ".leases"  # one file per name, naming the process that holds it
SHARD_LEASE_PREFIX = ".shard-"  # video ids start with a letter or digit: no row lease is named so
LEASE_RENEW_S = 60.0  # how often a run touches the leases it holds (LeaseKeeper)
LEASE_STALE_S = 5 * LEASE_RENEW_S  # another machine's lease not renewed this long is abandoned
CLOCK_PROBE_S = 600.0  # how often a process reads the store's clock again
CLOCK_PREFIX = ".clock-"  # a file written to read the store's clock (a name no lease takes)
_HELD_LEASES: dict[str, str] = {}  # lease URL -> this process's tag in it
_LEASE_LOCK = threading.Lock()  # a lease is never renewed while it is being given back


def shard_lease(shard: str) -> str:
    """The lease name of a shard (`00000` -> `.shard-00000`)."""
    return f"{SHARD_LEASE_PREFIX}{shard}"


class Leases:
    """The leases under one store's `.leases/`, by name (one path segment: a video id, or `shard_lease`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._offset, self._probed = 0.0, float("-inf")

    def store_now(self) -> float:
        """The store's clock now: this machine's plus the offset read (every CLOCK_PROBE_S) from the
        modification time the store gives a file written now; on local disk, this machine's."""
        if self.store.local:
            return time.time()
        if time.monotonic() - self._probed > CLOCK_PROBE_S:
            owner = owner_tag()
            relative = f"{LEASES}/{CLOCK_PREFIX}{owner}"
            try:
                before = time.time()
                self.store.fs.pipe_file(self.store.path(relative), owner.encode())
                written = modified_time(self.store.fs.info(self.store.path(relative)))
                self._offset = written - (before + time.time()) / 2
                self._probed = time.monotonic()
                self.store.fs.rm_file(self.store.path(relative))
            except Exception:  # noqa: BLE001 - keep the last offset; a stale lease waits a little longer
                pass
        return time.time() + self._offset

    def abandoned(self, holder: str, mtime: float) -> bool:
        """Whether a lease's holder is gone: its process, on this machine; or, on another machine, it
        stopped renewing the lease LEASE_STALE_S ago by the store's clock."""
        parts = holder.split(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2] == fs.machine_id():
            return not fs._alive(int(parts[1]))
        return self.store_now() - mtime > LEASE_STALE_S

    def take(self, name: str) -> bool:
        """Claim `name` for this process: True if taken (then `release`), False while another live
        process holds it. Transient storage errors are tried again (a lease this process made in a call
        whose answer was lost is taken back: it names this process, which does not hold it)."""
        if not name or "/" in name:
            raise ValueError(f"a lease name is one path segment, got {name!r}")
        return retried(self._take, name)

    def _take(self, name: str) -> bool:
        """Created exclusively (see `Store.create_exclusive`); a lease whose holder is gone is deleted,
        then claimed again once."""
        relative, owner, store = f"{LEASES}/{name}", owner_tag(), self.store
        for _ in range(2):
            if store.create_exclusive(relative, owner.encode()):
                if self.holder(name) != owner:  # a store that ignored the exclusive write
                    return False
                _HELD_LEASES[store.url_of(relative)] = owner
                return True
            holder = self.holder(name)
            if holder is None:  # released meanwhile: try again
                continue
            try:
                mtime = modified_time(store.fs.info(store.path(relative)))
            except FileNotFoundError:
                continue
            if not (self.abandoned(holder, mtime) or self._leaked_here(relative, holder)):
                return False
            if self.holder(name) == holder:  # still the one found gone, not a newer claim
                with contextlib.suppress(FileNotFoundError):
                    store.fs.rm_file(store.path(relative))
        return False

    def release(self, name: str) -> None:
        """Give `name` back; only this process's own lease is deleted (never one taken over since). A
        storage error that outlasts the retries leaves the lease to expire (see `abandoned`)."""
        url = self.store.url_of(f"{LEASES}/{name}")
        try:
            retried(self._release, name)
        except Exception:  # noqa: BLE001 - never fails the work: the lease is only left to expire
            pass
        finally:
            with _LEASE_LOCK:
                _HELD_LEASES.pop(url, None)

    def _release(self, name: str) -> None:
        relative = f"{LEASES}/{name}"
        with _LEASE_LOCK:
            owner = _HELD_LEASES.get(self.store.url_of(relative))
            if owner is not None and self.holder(name) == owner:
                with contextlib.suppress(FileNotFoundError):
                    self.store.fs.rm_file(self.store.path(relative))

    def renew(self) -> int:
        """Touch every lease this process holds in this store, so that work that takes longer than
        LEASE_STALE_S is not taken over by another machine; returns how many were renewed. A lease
        another process took over meanwhile (it found ours stale) is left alone."""
        store = self.store
        prefix, renewed = store.url_of(LEASES) + "/", 0
        for url, owner in list(_HELD_LEASES.items()):
            if not url.startswith(prefix):
                continue
            name = url.removeprefix(prefix)
            with _LEASE_LOCK:
                if _HELD_LEASES.get(url) != owner or self.holder(name) != owner:
                    continue
                path = store.path(f"{LEASES}/{name}")
                try:
                    if store.local:
                        os.utime(path)
                    else:  # an object's modification time changes only when it is written again
                        store.fs.pipe_file(path, owner.encode())
                except FileNotFoundError:
                    continue
                renewed += 1
        return renewed

    def holder(self, name: str) -> str | None:
        """The owner tag in a lease, None when there is none."""
        try:
            return self.store.read_bytes(f"{LEASES}/{name}").decode(errors="replace").strip()
        except FileNotFoundError:
            return None

    def remove_abandoned(self) -> int:
        """Delete the leases whose holder is gone; returns how many. One listing; a lease that cannot be
        read or deleted now is left to the next call."""
        store = self.store
        try:
            paths = retried(store.fs.find, store.path(LEASES))
        except Exception:  # noqa: BLE001 - housekeeping never stops a run
            return 0
        removed = 0
        for path in paths:
            name = path.rsplit("/", 1)[-1]
            try:
                holder = self.holder(name)
                if holder is None or not self.abandoned(holder, modified_time(store.fs.info(path))):
                    continue
                if self.holder(name) == holder:  # still the one found gone, not a newer claim
                    store.fs.rm_file(path)
                    removed += 1
            except Exception:  # noqa: BLE001 - released or taken meanwhile, or a storage error
                continue
        return removed

    def _leaked_here(self, relative: str, holder: str) -> bool:
        """A lease naming this very process that it no longer holds (left by an interrupted call)."""
        return names_this_process(holder) and _HELD_LEASES.get(self.store.url_of(relative)) != holder


class LeaseKeeper:
    """While open, renews the leases this process holds on `outputs` every LEASE_RENEW_S seconds, in a
    daemon thread (a renewal that fails is tried again at the next interval)."""

    def __init__(self, outputs: OutputStore):
        self.outputs, self._stop = outputs, threading.Event()
        self._thread = threading.Thread(target=self._keep, name="stillmotion-leases", daemon=True)

    def _keep(self) -> None:
        while not self._stop.wait(LEASE_RENEW_S):
            with contextlib.suppress(Exception):  # a flaky store: the lease is still far from stale
                self.outputs.renew_leases()

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
