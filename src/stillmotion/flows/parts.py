"""Static splits of a manifest for any launcher, and merging their parts (DESIGN section 7 (a)).

    stillmotion run MANIFEST --output OUT --num-shards 16 --shard-index 3     # or from Slurm / Kubernetes
    stillmotion merge OUT                                                     # results.parquet, report.html

Rows go in blocks, in manifest order: `--shard-size` rows in the webdataset format (so every tar has
exactly one owner), BLOCK_ROWS rows in the files format (so 16 indices on 10,000 rows all get work);
block b belongs to index b mod N. Index k writes its part of the results to
OUTPUT/.parts/{split}/{k}.parquet and then, last, its completion marker {k}.json, which records N, the
block size and the manifest's fingerprint (folder `{split}` is named by them): parts of an older split
are never merged with a newer one, and a relaunch of the same command redoes only what is unfinished.
No Prefect, no torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ..storage import OutputStore, retried
from .tracking import RunError

PARTS = ".parts"  # under the output; a dot-name no video id can take
BLOCK_ROWS = 32  # rows per block in the files format


@dataclass(frozen=True)
class Split:
    """Index `index` of `count`: the rows of the blocks b with b mod count == index."""

    count: int
    index: int
    block: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise RunError(f"--shard-index must be in 0..{self.count - 1} for --num-shards {self.count}")
        if self.block < 1:
            raise RunError(f"the block size must be >= 1, got {self.block}")

    def owns(self, row: int) -> bool:
        return (row // self.block) % self.count == self.index

    def rows_of(self, total: int) -> int:
        """How many of the rows 0..total-1 this index owns."""
        full, rest = divmod(total, self.block * self.count)
        extra = min(max(rest - self.index * self.block, 0), self.block)
        return full * self.block + extra


def split_of(num_shards: int | None, shard_index: int | None, block: int, environ=os.environ) -> Split | None:
    """The split a run takes: the options given, else the launcher's environment (a Slurm array task:
    SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT; a Kubernetes Indexed Job:
    JOB_COMPLETION_INDEX, with --num-shards given); None for a plain run (one index of one)."""
    if num_shards is None and shard_index is None:
        if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
            task, first = int(environ["SLURM_ARRAY_TASK_ID"]), int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
            num_shards, shard_index = int(environ["SLURM_ARRAY_TASK_COUNT"]), task - first
        else:
            return None
    if shard_index is None:
        if "JOB_COMPLETION_INDEX" not in environ:
            raise RunError("--num-shards needs --shard-index (or a launcher's index: Slurm, Kubernetes)")
        shard_index = int(environ["JOB_COMPLETION_INDEX"])
    if num_shards is None:
        raise RunError("--shard-index needs --num-shards")
    if num_shards == 1:
        return None if shard_index == 0 else Split(1, shard_index, block)
    return Split(num_shards, shard_index, block)


def manifest_fingerprint(manifest: str, limit: int | None) -> str:
    """A hash of the manifest's bytes (and --limit): another manifest is another split."""
    import fsspec

    digest = hashlib.sha256(f"{limit}\0".encode())
    with fsspec.open(manifest, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def split_folder(split: Split, fingerprint: str) -> str:
    return f"{PARTS}/{split.count}x{split.block}-{fingerprint}"


def part_name(split: Split, fingerprint: str) -> str:
    """The results part of an index (written in place of results.parquet)."""
    return f"{split_folder(split, fingerprint)}/{split.index:05d}.parquet"


def write_marker(
    outputs: OutputStore, split: Split, fingerprint: str, command: str, summary: dict, rows_url: str
) -> None:
    """The index's completion marker, written after its part: N, block, manifest, how to rerun it."""
    record = {
        "rows_url": rows_url,  # where the rows' folders are (the output, or CACHE/rows): previews
        "num_shards": split.count,
        "shard_index": split.index,
        "block_rows": split.block,
        "manifest_fingerprint": fingerprint,
        "command": command,
        "counts": {name: summary.get(name) for name in ("rows", "done", "cached", "failed")},
        "finished": time.time(),
    }
    outputs.write_json(f"{split_folder(split, fingerprint)}/{split.index:05d}.json", record)


@dataclass
class Parts:
    """The parts of one split found in an output."""

    folder: str
    count: int
    block: int
    complete: dict[int, dict]  # index -> its marker
    incomplete: list[int]  # a part without its marker (the index was stopped while writing it)
    missing: list[int]  # neither

    @property
    def whole(self) -> bool:
        return not self.incomplete and not self.missing

    def rerun_commands(self) -> list[str]:
        template = next(iter(self.complete.values()), {}).get("command")
        return [
            template.replace("--shard-index {index}", f"--shard-index {index}")
            if template
            else f"stillmotion run MANIFEST --output OUTPUT --num-shards {self.count} --shard-index {index}"
            for index in sorted(self.incomplete + self.missing)
        ]


def find_parts(outputs: OutputStore) -> Parts:
    """The newest split in the output (by its newest marker); RunError when there is none."""
    try:
        paths = retried(outputs.fs.glob, outputs.path(f"{PARTS}/*/*"))
    except FileNotFoundError:
        paths = []
    by_folder: dict[str, dict[str, list]] = {}
    for path in paths:
        folder, name = path.rsplit("/", 2)[-2:]
        stem, _, ext = name.partition(".")
        if stem.isdigit() and ext in ("json", "parquet"):
            by_folder.setdefault(folder, {"json": [], "parquet": []})[ext].append(int(stem))
    markers: dict[str, dict[int, dict]] = {}
    for folder, found in by_folder.items():
        names = [f"{PARTS}/{folder}/{index:05d}.json" for index in found["json"]]
        datas = retried(outputs.fs.cat, [outputs.path(name) for name in names], on_error="omit")
        markers[folder] = {}
        for data in datas.values():
            try:
                marker = json.loads(data)
                markers[folder][int(marker["shard_index"])] = marker
            except (ValueError, KeyError, TypeError):
                continue
    markers = {folder: found for folder, found in markers.items() if found}
    if not markers:
        raise RunError(f"no parts to merge under {outputs.url_of(PARTS)}: run with --num-shards first")
    folder = max(markers, key=lambda f: max(m.get("finished", 0) for m in markers[f].values()))
    complete = markers[folder]
    sample = next(iter(complete.values()))
    count, block = int(sample["num_shards"]), int(sample["block_rows"])
    written = set(by_folder[folder]["parquet"])
    incomplete = sorted(i for i in written - set(complete) if i < count)
    missing = sorted(set(range(count)) - set(complete) - set(incomplete))
    return Parts(f"{PARTS}/{folder}", count, block, complete, incomplete, missing)


def merged_table(outputs: OutputStore, parts: Parts) -> pa.Table:
    """Every complete part's rows, in manifest order."""
    tables = [
        pq.read_table(io.BytesIO(retried(outputs.read_bytes, f"{parts.folder}/{index:05d}.parquet")))
        for index in sorted(parts.complete)
    ]
    if not tables:
        raise RunError("no complete part to merge")
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.sort_by("row")


def merge(output: str) -> tuple[dict, Parts]:
    """results.parquet and report.html of the newest split's complete parts, in manifest order; returns
    the run's counts (as `run` does) and the parts found (missing or incomplete indices among them)."""
    from ..storage import configure_storage
    from .tracking import RESULT_FIELDS, SCORE_NAMES, RunTracker

    configure_storage()
    outputs = OutputStore(output)
    parts = find_parts(outputs)
    table = merged_table(outputs, parts)
    contract = {field.name for field in RESULT_FIELDS}
    extra = [field for field in table.schema if field.name not in contract]
    rows_url = next(iter(parts.complete.values())).get("rows_url") or outputs.url
    tracker = RunTracker(outputs, table.num_rows, extra, show_progress=False, rows=OutputStore(rows_url))
    for record in table.to_pylist():
        tracker.add(
            record["row"],
            record["video_id"],
            {field.name: record.get(field.name) for field in extra},
            status=record["status"],
            error=record.get("error"),
            video=record.get("video"),
            metadata=record.get("metadata"),
            seconds=record.get("seconds"),
            cached=bool(record.get("cached")),
            scores={name: record.get(f"score_{name}") for name in SCORE_NAMES},
            fingerprint=record.get("fingerprint"),
            changed=bool(record.get("changed")),
            shard=record.get("shard"),
            key=record.get("key"),
        )
    return tracker.close(), parts
