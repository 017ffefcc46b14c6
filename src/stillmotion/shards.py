"""The `webdataset` output format: rows packed into tar shards, in manifest order (DESIGN section 5).

    OUTPUT/00000.tar            {key}.mp4, {key}.json (metadata), {key}.txt (prompts), {key}.png (preview)
    OUTPUT/00000.parquet        one row per manifest row of the shard, failed ones with their reason
    OUTPUT/00000_stats.json     counts, failures by reason, seconds, start, end: written last

Shard k holds the run's manifest rows k*size .. (k+1)*size - 1, as img2dataset and video2dataset lay
out theirs. Each row is still made and published on its own, into the cache (CACHE/rows/{video_id}/,
the files format's folder), so resume stays per row; a shard is packed once every row in it is final,
from those folders (or, for a row whose folder is gone, from the shard that held it before), built
in a local file and uploaded whole, its stats file last: a loader never sees a partial tar, and a
shard without its stats file is packed again by the next run. A shard whose rows and outcomes are
those of the complete shard already there is left as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .outputs import METADATA
from .storage import OutputStore, owner_tag, remove_abandoned, retried

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
    """A complete shard found in the output: its rows' ids and outcomes, in order."""

    size: int
    ids: list
    statuses: list


def read_complete_shards(outputs: OutputStore) -> dict[int, _Shard]:
    """{index: shard} of each complete shard in the output (one listing, then each shard's Parquet)."""
    shards = {}
    for path in retried(outputs.fs.glob, outputs.path(f"*{STATS_SUFFIX}")):
        name = path.rsplit("/", 1)[-1].removesuffix(STATS_SUFFIX)
        if not name.isdigit():
            continue
        try:
            stats = json.loads(retried(outputs.read_bytes, f"{name}{STATS_SUFFIX}"))
            table = pq.read_table(io.BytesIO(retried(outputs.read_bytes, f"{name}.parquet")))
            ids, statuses = table.column("video_id").to_pylist(), table.column("status").to_pylist()
        except Exception:  # noqa: BLE001 - unreadable: not complete, packed again
            continue
        shards[int(name)] = _Shard(stats.get("shard_size"), ids, statuses)
    return shards


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
        # where each finished row of a complete shard lies, for a row whose folder is gone from the cache
        self._held = {
            video_id: index
            for index, shard in self.existing.items()
            for video_id, status in zip(shard.ids, shard.statuses, strict=True)
            if status == "ok"
        }
        self._index: int | None = None  # the shard whose rows are coming in
        self._records: list[dict] = []
        self._started = time.time()
        self.packed = self.kept = 0
        remove_abandoned(tempfile.gettempdir(), SHARD_TEMP_PREFIX)

    def is_complete(self, video_id: str) -> bool:
        """Whether the row is in a complete shard already (so its folder need not be in the cache)."""
        return video_id in self._held

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
        name = shard_name(index)
        old = self.existing.get(index)
        if (
            not self.repack
            and old is not None
            and old.size == self.size
            and old.ids == [r["video_id"] for r in records]
            and old.statuses == [r["status"] for r in records]
        ):
            self.kept += 1  # the same rows with the same outcomes: left as it is
            return
        ok = [r for r in records if r["status"] == "ok"]
        local = Path(tempfile.gettempdir()) / f"{SHARD_TEMP_PREFIX}{owner_tag()}"  # see remove_abandoned
        try:
            with contextlib.ExitStack() as stack, tarfile.open(local, "w", format=tarfile.PAX_FORMAT) as tar:
                held = _HeldRows(self.outputs, self._held, stack)
                for start in range(0, len(ok), READ_BATCH):
                    for record, files in self._row_files(ok[start : start + READ_BATCH], held):
                        _add_sample(tar, record["key"], files)
            self.outputs.put_file(str(local), f"{name}.tar")
        finally:
            local.unlink(missing_ok=True)
        table = pa.Table.from_pylist(records, schema=self.schema)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.outputs.write_bytes(f"{name}.parquet", buffer.getvalue())
        self.outputs.write_json(f"{name}{STATS_SUFFIX}", _stats(index, self.size, records, self._started))
        self.existing[index] = _Shard(
            self.size, [r["video_id"] for r in records], [r["status"] for r in records]
        )
        self.packed += 1

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
                files = held.files(record["video_id"], self.rows.url_of(record["video_id"]))
            metadata = json.loads(files["json"])
            files["txt"] = "\n".join(metadata.get("prompts", [])).encode()
            yield record, files


class _HeldRows:
    """The files of rows that complete shards hold, each shard opened once (its members indexed once)."""

    def __init__(self, outputs: OutputStore, held: dict[str, int], stack: contextlib.ExitStack) -> None:
        self.outputs, self.held, self.stack, self.archives = outputs, held, stack, {}

    def files(self, video_id: str, folder: str) -> dict[str, bytes]:
        if video_id not in self.held:
            raise FileNotFoundError(f"{folder} is incomplete and no complete shard holds {video_id!r}")
        index = self.held[video_id]
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
