"""The `webdataset` output format: rows packed into tar shards, in manifest order (DESIGN section 5).

    OUTPUT/00000.tar            {key}.mp4, {key}.json (metadata), {key}.txt (prompts), {key}.png (preview)
    OUTPUT/00000.parquet        one row per manifest row of the shard, failed ones with their reason
    OUTPUT/00000_stats.json     counts, failures by reason, seconds, start, end: written last

Shard k holds the run's manifest rows k*size .. (k+1)*size - 1, as img2dataset and video2dataset lay
out theirs. Each row is still made and published on its own, into the cache (CACHE/rows/{video_id}/,
the files format's folder), so resume stays per row; a shard is packed once every row in it is final,
from those folders (or, for a row whose folder is gone, from the shard that held it before), built
in a local file and uploaded whole, its stats file last: a loader never sees a partial tar, and a
shard without its stats file is packed again by the next run. A shard whose rows, outcomes and
fingerprints are those of the complete shard already there is left as it is.

No row is lost when shards are repacked (another --shard-size, a manifest that moves rows): before a
complete shard is replaced, each finished row it holds that the new shard does not, and whose folder
is not whole in the cache, is copied back there (object stores have no rename, so the old tar must
not be overwritten first). Packing a shard holds its lease (`.leases/.shard-00000`): a shard another
live run is packing is left to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .outputs import METADATA
from .storage import LeaseKeeper, OutputStore, owner_tag, remove_abandoned, retried

FORMATS = ("files", "webdataset")
SHARD_SIZE = 1000
STATS_SUFFIX = "_stats.json"
SHARD_TEMP_PREFIX = "stillmotion-shard-"  # the local file a tar is built in
ROW_FILES = {"mp4": "video.mp4", "json": METADATA, "png": "preview.png"}  # tar extension: row file
READ_BATCH = 32  # rows whose files are fetched in one call (concurrent on object stores)


def shard_name(index: int) -> str:
    return f"{index:05d}"


def sample_key(video_id: str) -> str:
    """The sample's key in a tar: the video id, its dots written %2E (WebDataset splits a member's
    name at the first dot; ids hold no %)."""
    return video_id.replace(".", "%2E")


@dataclasses.dataclass
class _Shard:
    """A complete shard found in the output: its rows' ids, outcomes and fingerprints, in order."""

    size: int
    ids: list
    statuses: list
    fingerprints: list | None = None  # None: packed before rows had fingerprints

    def unchanged(self, size: int, records: list[dict]) -> bool:
        """Whether packing `records` at `size` would give this shard again: the same rows with the same
        outcomes, and the same fingerprints where both have one."""
        if (size, self.ids, self.statuses) != (
            self.size,
            [r["video_id"] for r in records],
            [r["status"] for r in records],
        ):
            return False
        if self.fingerprints is None:
            return True
        return all(
            old == new or old is None or new is None
            for old, new in zip(self.fingerprints, (r.get("fingerprint") for r in records), strict=True)
        )


def read_complete_shards(outputs: OutputStore) -> dict[int, _Shard]:
    """{index: shard} of each complete shard in the output (one listing, then each shard's Parquet)."""
    shards = {}
    for path in retried(outputs.fs.glob, outputs.path(f"*{STATS_SUFFIX}")):
        name = path.rsplit("/", 1)[-1].removesuffix(STATS_SUFFIX)
        if name.isdigit() and (shard := read_complete_shard(outputs, name)) is not None:
            shards[int(name)] = shard
    return shards


def read_complete_shard(outputs: OutputStore, name: str) -> _Shard | None:
    """The shard `name` (`00000`) if it is complete (its stats file and Parquet readable), else None."""
    try:
        stats = json.loads(retried(outputs.read_bytes, f"{name}{STATS_SUFFIX}"))
        table = pq.read_table(io.BytesIO(retried(outputs.read_bytes, f"{name}.parquet")))
        ids, statuses = table.column("video_id").to_pylist(), table.column("status").to_pylist()
        fingerprints = (
            table.column("fingerprint").to_pylist() if "fingerprint" in table.column_names else None
        )
    except Exception:  # noqa: BLE001 - missing or unreadable: not complete, packed again
        return None
    return _Shard(stats.get("shard_size"), ids, statuses, fingerprints)


class ShardWriter:
    """Takes the run's row records in manifest order and packs each shard once its rows are final."""

    def __init__(
        self,
        outputs: OutputStore,
        rows: OutputStore,
        total: int,
        shard_size: int,
        schema: pa.Schema,
        repack: bool = False,
    ) -> None:
        self.outputs, self.rows, self.total, self.size = outputs, rows, total, shard_size
        self.schema, self.repack = schema, repack
        self.existing = read_complete_shards(outputs)
        # where each finished row of a complete shard lies (for a row whose folder is gone from the
        # cache), and the fingerprint it was packed with
        self._held: dict[str, int] = {}
        self._fingerprints: dict[str, str] = {}
        for index, shard in self.existing.items():
            self._hold(index, shard)
        self._index: int | None = None  # the shard whose rows are coming in
        self._records: list[dict] = []
        self._started = time.time()
        self.packed = self.kept = self.restored = 0  # restored: rows copied back from a replaced shard
        self.busy: list[str] = []  # shards another live run was packing: left to it
        remove_abandoned(tempfile.gettempdir(), SHARD_TEMP_PREFIX)

    def is_complete(self, video_id: str) -> bool:
        """Whether the row is in a complete shard already (so its folder need not be in the cache)."""
        return video_id in self._held

    def fingerprint_of(self, video_id: str) -> str | None:
        """The fingerprint recorded for a finished row in the complete shard that holds it (None when
        no shard holds it, or its shard was packed without fingerprints)."""
        return self._fingerprints.get(video_id)

    def counts(self) -> dict:
        """What this run did with the shards, for the run's summary."""
        return {"packed": self.packed, "kept": self.kept, "busy": self.busy, "restored": self.restored}

    def shard_of(self, row: int) -> str:
        return self.outputs.url_of(f"{shard_name(row // self.size)}.tar")

    def add(self, record: dict) -> None:
        """One row's record, rows in manifest order (a row left out, e.g. not reached by an interrupted
        run, leaves its shard unpacked); packs the shard once its last row is here."""
        row = record["row"]
        if row >= self.total:
            return  # past --limit: not a row of this run
        index = row // self.size
        if index != self._index:  # a new shard (the rows of one left unpacked are dropped)
            if self._index is not None:
                self._started = time.time()
            self._index, self._records = index, []
        record["shard"], record["key"] = self.shard_of(row), sample_key(record["video_id"] or "")
        self._records.append(record)
        last = min((index + 1) * self.size, self.total) - 1
        if row == last and len(self._records) == last - index * self.size + 1:
            self._pack(index, self._records)
            self._index, self._records, self._started = None, [], time.time()

    def _pack(self, index: int, records: list[dict]) -> None:
        """Pack a shard while holding its lease; one that another live run holds is left to it."""
        name = shard_name(index)
        if not self.outputs.take_shard_lease(name):
            self.busy.append(name)  # said in the run's summary
            return
        try:
            old = self._refresh(index)  # another run may have packed it since this one started
            if not self.repack and old is not None and old.unchanged(self.size, records):
                self.kept += 1  # the same rows, outcomes and fingerprints: left as it is
                return
            with LeaseKeeper(self.outputs):
                self._write(index, old, records)
        finally:
            self.outputs.release_shard_lease(name)

    def _write(self, index: int, old: _Shard | None, records: list[dict]) -> None:
        """Build the tar locally, copy back the rows only the old shard holds, then upload the tar, its
        Parquet and its stats file last."""
        name = shard_name(index)
        ok = [r for r in records if r["status"] == "ok"]
        local = Path(tempfile.gettempdir()) / f"{SHARD_TEMP_PREFIX}{owner_tag()}"  # see remove_abandoned
        try:
            with contextlib.ExitStack() as stack:
                held = _HeldRows(self.outputs, self.rows, self._held, stack)
                with tarfile.open(local, "w", format=tarfile.PAX_FORMAT) as tar:
                    for start in range(0, len(ok), READ_BATCH):
                        for record, files in self._row_files(ok[start : start + READ_BATCH], held):
                            _add_sample(tar, record["key"], files)
                if old is not None:
                    self._restore_displaced(index, old, {r["video_id"] for r in ok}, held)
            # the old tar goes: each of its rows is in the new one or in the cache (a run killed before
            # the stats file is written leaves the old Parquet beside the new tar: rows it lists that
            # the tar lacks are read from the cache, see _HeldRows.files)
            self.outputs.put_file(str(local), f"{name}.tar")
        finally:
            local.unlink(missing_ok=True)
        self._forget(index)
        self.existing.pop(index, None)
        table = pa.Table.from_pylist(records, schema=self.schema)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.outputs.write_bytes(f"{name}.parquet", buffer.getvalue())
        self.outputs.write_json(f"{name}{STATS_SUFFIX}", _stats(index, self.size, records, self._started))
        shard = _Shard(
            self.size,
            [r["video_id"] for r in records],
            [r["status"] for r in records],
            [r.get("fingerprint") for r in records] if "fingerprint" in self.schema.names else None,
        )
        self.existing[index] = shard
        self._hold(index, shard)
        self.packed += 1

    def _restore_displaced(self, index: int, old: _Shard, packed: set[str], held: _HeldRows) -> None:
        """Copy each finished row that only the old shard at `index` holds (not in the new shard, its
        folder not whole in the cache) back into its folder, metadata.json last. A row whose lease is
        held is being made again (by this run or another): its new folder is on its way."""
        displaced = [
            video_id
            for video_id, status in zip(old.ids, old.statuses, strict=True)
            if status == "ok" and self._held.get(video_id) == index and video_id not in packed
        ]
        whole = self._whole(displaced)
        for video_id in displaced:
            if video_id in whole or not self.rows.take_lease(video_id):
                continue
            try:
                if self._whole([video_id]):  # looked at again, now that no one else may write it
                    continue
                try:
                    files = held.from_shard(index, video_id)
                except FileNotFoundError:  # a shard that lists a row it lacks: made again by a later run
                    print(f"stillmotion: shard {shard_name(index)} lacks {video_id!r}", file=sys.stderr)
                    continue
                self.rows.restore(video_id, {ROW_FILES[ext]: data for ext, data in files.items()})
                self.restored += 1
            finally:
                self.rows.release_lease(video_id)

    def _whole(self, video_ids: list[str]) -> set[str]:
        """The rows whose folders in the cache hold every file a sample needs."""
        names = [f"{video_id}/{file}" for video_id in video_ids for file in ROW_FILES.values()]
        present = self.rows.present(names) if names else set()
        return {
            video_id
            for video_id in video_ids
            if all(f"{video_id}/{file}" in present for file in ROW_FILES.values())
        }

    def _refresh(self, index: int) -> _Shard | None:
        """The complete shard at `index` as it is now (read again once its lease is held)."""
        shard = read_complete_shard(self.outputs, shard_name(index))
        if shard != self.existing.get(index):
            self._forget(index)
            self.existing.pop(index, None)
            if shard is not None:
                self.existing[index] = shard
                self._hold(index, shard)
        return shard

    def _hold(self, index: int, shard: _Shard) -> None:
        fingerprints = shard.fingerprints or [None] * len(shard.ids)
        for video_id, status, fingerprint in zip(shard.ids, shard.statuses, fingerprints, strict=True):
            if status == "ok":
                self._held[video_id] = index
                if fingerprint is None:
                    self._fingerprints.pop(video_id, None)
                else:
                    self._fingerprints[video_id] = fingerprint

    def _forget(self, index: int) -> None:
        """Drop the rows of the shard at `index` (still in `existing`) from where rows are held."""
        shard = self.existing.get(index)
        for video_id in shard.ids if shard is not None else []:
            if self._held.get(video_id) == index:
                del self._held[video_id]
                self._fingerprints.pop(video_id, None)

    def _row_files(self, records: list[dict], held: _HeldRows):
        """(record, {ext: bytes}) of each finished row: from its folder in the cache, else from the
        complete shard that held it."""
        paths = {}
        for record in records:
            for ext, file in ROW_FILES.items():
                paths[self.rows.path(f"{record['video_id']}/{file}")] = (record["video_id"], ext)
        found = retried(self.rows.fs.cat, list(paths), on_error="omit")
        by_row: dict[str, dict] = {}
        for path, data in found.items():
            video_id, ext = paths[path]
            by_row.setdefault(video_id, {})[ext] = data
        for record in records:
            files = by_row.get(record["video_id"], {})
            if len(files) < len(ROW_FILES):
                files = held.files(record["video_id"])
            metadata = json.loads(files["json"])
            files["txt"] = "\n".join(metadata.get("prompts", [])).encode()
            yield record, files


class _HeldRows:
    """The files of rows that complete shards hold, each shard opened once (its members indexed once)."""

    def __init__(
        self, outputs: OutputStore, rows: OutputStore, held: dict[str, int], stack: contextlib.ExitStack
    ) -> None:
        self.outputs, self.rows, self.held, self.stack, self.archives = outputs, rows, held, stack, {}

    def files(self, video_id: str) -> dict[str, bytes]:
        """A row's files from the shard that holds it; from its folder in the cache if that shard was
        replaced meanwhile (by another run, which copied the row back first)."""
        if video_id in self.held:
            with contextlib.suppress(FileNotFoundError):
                return self.from_shard(self.held[video_id], video_id)
        paths = {self.rows.path(f"{video_id}/{file}"): ext for ext, file in ROW_FILES.items()}
        found = retried(self.rows.fs.cat, list(paths), on_error="omit")
        if len(found) < len(ROW_FILES):
            raise FileNotFoundError(
                f"{self.rows.url_of(video_id)} is incomplete and no complete shard holds {video_id!r}"
            )
        return {paths[path]: data for path, data in found.items()}

    def from_shard(self, index: int, video_id: str) -> dict[str, bytes]:
        if index not in self.archives:
            handle = self.stack.enter_context(
                self.outputs.fs.open(self.outputs.path(f"{shard_name(index)}.tar"))
            )
            self.archives[index] = fsspec.filesystem("tar", fo=handle, skip_instance_cache=True)
        key = sample_key(video_id)
        return {ext: self.archives[index].cat_file(f"{key}.{ext}") for ext in ROW_FILES}


def _add_sample(tar: tarfile.TarFile, key: str, files: dict[str, bytes]) -> None:
    for ext in ("mp4", "json", "txt", "png"):
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(files[ext]), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(files[ext]))


def _stats(index: int, size: int, records: list[dict], started: float) -> dict:
    failures = Counter(r["error"] or "unknown" for r in records if r["status"] == "failed")
    return {
        "shard": index,
        "shard_size": size,
        "first_row": records[0]["row"],
        "last_row": records[-1]["row"],
        "count": len(records),
        "successes": sum(r["status"] == "ok" for r in records),
        "failed": sum(failures.values()),
        "cached": sum(bool(r["cached"]) for r in records),
        "failures_by_reason": dict(failures.most_common()),
        "seconds": round(sum(r["seconds"] or 0.0 for r in records), 3),  # the rows' own making time
        "wall_seconds": round(time.time() - started, 3),  # from the previous shard's packing to this one's
        "start": _iso(started),
        "end": _iso(time.time()),
    }


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")
