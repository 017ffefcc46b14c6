"""What a batch run reports: results.parquet (in manifest order), a progress line, Prefect artifacts."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..manifests.schema import REPORT_FILE, RESULTS_FILE
from ..report import RunReport, render, thumbnail
from ..shards import ShardWriter, shard_name
from ..storage import OutputStore, owner_tag, remove_abandoned

FAILURES_SHOWN = 10  # failed rows listed in the summary (and on the terminal)
RESULTS_TEMP_PREFIX = "stillmotion-results-"  # the local folder results.parquet is built in


# Where a run's wall time counts from (a time.monotonic() value): `stillmotion run` sets its process's start,
# so the summary line and report.html hold the imports, the server's start-up and the model's load too; None
# (a flow called from Python, a served run): from the tracker's creation
_RUN_STARTED: float | None = None


def count_from(started: float | None) -> None:
    """Count the wall time of the runs that follow from `started` (time.monotonic()); None: from each
    run's tracker."""
    global _RUN_STARTED
    _RUN_STARTED = started


class RunError(RuntimeError):
    """The run cannot proceed at all (unwritable output, unusable model): exit status 1."""


def _not_written(what: str, error: BaseException) -> RunError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RunError(f"cannot write {what}: {reason}")


RESULT_FIELDS = [
    pa.field("video_id", pa.string()),
    pa.field("status", pa.string()),  # ok | failed
    pa.field("error", pa.string()),
    pa.field("video", pa.string()),
    pa.field("metadata", pa.string()),
    pa.field("seconds", pa.float64()),
    pa.field("cached", pa.bool_()),  # complete before this run: found by lookup, nothing recomputed
    # made again: the row's video existed, made from something else (its prompts, parameters, source...)
    pa.field("changed", pa.bool_()),
    pa.field("fingerprint", pa.string()),  # what the row asks for (stillmotion.fingerprints)
    pa.field("row", pa.int64()),
    pa.field("shard", pa.string()),  # --format webdataset: the tar the row goes into, and its key there
    pa.field("key", pa.string()),
]
# a video's scores (metadata.json "scores", see metrics.basic_scores and models.scoring), as score_{name};
# null where not computed (a scoring model missing, a failed row)
SCORE_NAMES = (
    "structure",
    "structure_last",
    "mean_step",
    "worst_step",
    "worst_over_mean",
    "empty_frames",
    "clip_t",
    "clip_f",
    "dino_structure",
)
RESULT_FIELDS += [pa.field(f"score_{name}", pa.float64()) for name in SCORE_NAMES]


@dataclass
class Counts:
    done: int = 0
    cached: int = 0
    failed: int = 0
    repaired: int = 0  # of done: rows whose chain met a damaged artifact, recomputed it and finished
    changed: int = 0  # of done: rows made again because what they ask for changed

    @property
    def finished(self) -> int:
        return self.done + self.cached + self.failed


@dataclass
class RunTracker:
    """Collects one result per manifest row and writes them to OUTPUT/results.parquet in row order.

    Rows finish out of order; they wait in a buffer until every earlier row has finished, so the
    buffer holds the rows finished after the oldest unfinished one (bounded by the flow's span of
    work), and the file is written in batches, never held whole. The progress artifact is created
    here, in the batch flow run, so it belongs to that run, not to a chunk subflow.
    """

    outputs: OutputStore
    total: int
    extra_fields: list[pa.Field]
    show_progress: bool = True
    rows: OutputStore | None = None  # where the rows' folders are (the output, or CACHE/rows)
    shard_size: int | None = None  # --format webdataset: rows per shard
    repack: bool = False  # pack every shard, even one already complete with the same rows (--force)
    results_name: str = RESULTS_FILE  # where the results go: results.parquet, or an index's part of them
    write_report: bool = True  # report.html (a split's index leaves it to `stillmotion merge`)
    counted_total: int | None = None  # the rows the progress counts (an index of a split: its own)
    counts: Counts = field(default_factory=Counts)
    _buffer: dict[int, dict] = field(default_factory=dict)
    _next_row: int = 0
    _batch: list[dict] = field(default_factory=list)
    _summary: list[dict] = field(default_factory=list)
    _skipped: set[int] = field(default_factory=set)  # rows left out, not yet passed by _next_row
    failures: list[dict] = field(default_factory=list)  # the first FAILURES_SHOWN failed rows
    report: RunReport = field(default_factory=RunReport)

    def __post_init__(self) -> None:
        self._contract = {f.name for f in RESULT_FIELDS}  # a manifest column never shadows a result column
        self.schema = pa.schema(
            RESULT_FIELDS + [f for f in self.extra_fields if f.name not in self._contract]
        )
        # built locally, uploaded whole at the end; a killed run's folder is removed by the next run
        remove_abandoned(tempfile.gettempdir(), RESULTS_TEMP_PREFIX)
        self._tmp = Path(tempfile.gettempdir()) / f"{RESULTS_TEMP_PREFIX}{owner_tag()}"
        self._tmp.mkdir()
        self._path = self._tmp / RESULTS_FILE
        self._writer = pq.ParquetWriter(self._path, self.schema)
        self.rows = self.rows or self.outputs
        self.shards = (
            ShardWriter(self.outputs, self.rows, self.total, self.shard_size, self.schema, self.repack)
            if self.shard_size
            else None
        )
        self._start = time.monotonic() if _RUN_STARTED is None else _RUN_STARTED
        self._counted = self.total if self.counted_total is None else self.counted_total
        self._bar = None
        self._artifact = None
        self._last_artifact = 0.0
        if self.show_progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self._counted, unit="video", file=sys.stderr, dynamic_ncols=True)
        if self.total:
            _progress_artifact(self, 0.0)

    def add(
        self,
        row: int,
        video_id: str | None,
        extra: dict,
        *,
        status: str,
        error: str | None = None,
        video: str | None = None,
        metadata: str | None = None,
        seconds: float | None = 0.0,
        cached: bool = False,
        counted: bool = True,
        repaired: bool = False,
        scores: dict | None = None,
        prompts: list[str] | None = None,
        timings: dict | None = None,
        fingerprint: str | None = None,
        changed: bool = False,
        shard: str | None = None,
        key: str | None = None,
    ) -> None:
        """Record one row's result; `counted=False` for a row outside this run's rows (past --limit)
        that is described but not counted or shown in the progress; `repaired` for a finished row
        that recomputed a damaged artifact; `prompts` and the stages' `timings` go to the report."""
        record = {
            "video_id": video_id,
            "status": status,
            "error": error,
            "video": video,
            "metadata": metadata,
            "seconds": None if seconds is None else round(seconds, 3),
            "cached": cached,
            "changed": changed,
            "fingerprint": fingerprint,
            "row": row,
            "shard": shard,  # set by the shard writer, or (merge) as the index's part recorded it
            "key": key,
            **{f"score_{name}": (scores or {}).get(name) for name in SCORE_NAMES},
            **{name: value for name, value in extra.items() if name not in self._contract},
        }
        self._buffer[row] = record
        if not counted:
            self._advance()
            return
        if status == "failed":
            self.counts.failed += 1
            if len(self.failures) < FAILURES_SHOWN:
                self.failures.append({"row": row, "video_id": video_id, "error": error})
        elif cached:
            self.counts.cached += 1
        else:
            self.counts.done += 1
            self.counts.repaired += repaired
            self.counts.changed += changed
        self.report.add(record, prompts, timings)
        if len(self._summary) < 1000:
            self._summary.append({k: record[k] for k in ("row", "video_id", "status", "error", "seconds")})
        self._advance()
        self._report()

    def has(self, row: int) -> bool:
        """Whether a row has been recorded (or skipped)."""
        return row < self._next_row or row in self._buffer or row in self._skipped

    def skip(self, row: int) -> None:
        """Leave a row out of results.parquet (past --limit, no video), so later rows need not wait."""
        self._skipped.add(row)
        self._advance()

    def _advance(self) -> None:
        while self._next_row in self._buffer or self._next_row in self._skipped:
            if self._next_row in self._skipped:
                self._skipped.discard(self._next_row)
            else:
                record = self._buffer.pop(self._next_row)
                if self.shards is not None:
                    self.shards.add(record)  # packs a shard once its last row is here
                self._batch.append(record)
            self._next_row += 1
        if len(self._batch) >= 1024:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            try:
                self._writer.write_table(pa.Table.from_pylist(self._batch, schema=self.schema))
            except OSError as error:  # a full temporary disk
                raise _not_written(f"the results table in {self._tmp}", error) from None
            self._batch = []

    def _report(self) -> None:
        c = self.counts
        if self._bar is not None:
            self._bar.set_postfix_str(f"done {c.done} cached {c.cached} failed {c.failed}", refresh=False)
            self._bar.update(c.finished - self._bar.n)
        now = time.monotonic()
        if self._counted and (now - self._last_artifact > 2 or c.finished == self._counted):
            self._last_artifact = now
            _progress_artifact(self, 100.0 * c.finished / self._counted)

    def discard(self) -> None:
        """Give up without writing anything (the batch flow will record the run instead)."""
        with contextlib.suppress(Exception):
            self._writer.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        if self._bar is not None:
            self._bar.close()

    def close(self) -> dict:
        """Write results.parquet and the summary artifact; return the counts."""
        for row in sorted(self._buffer):  # only non-contiguous leftovers (never in a full run)
            self._batch.append(self._buffer.pop(row))
        try:
            self._flush()
            self._writer.close()
            self.outputs.write_bytes(self.results_name, self._path.read_bytes())
        except RunError:
            raise
        except Exception as error:  # noqa: BLE001 - a full disk, an object store refusing the upload
            raise _not_written(self.outputs.url_of(self.results_name), error) from None
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
            if self._bar is not None:
                self._bar.close()
        c = self.counts
        summary = {
            "rows": c.finished,
            "done": c.done,
            "cached": c.cached,
            "failed": c.failed,
            "repaired": c.repaired,
            "changed": c.changed,
            "seconds": round(time.monotonic() - self._start, 2),
            "failures": self.failures,
            "logs": self.rows.url_of(".logs"),
            "results": self.outputs.url_of(self.results_name),
        }
        if self.shards is not None:
            summary["shards"] = self.shards.counts()
        if self.write_report:
            self._write_report(summary)
        _table_artifact(self._summary, summary)
        return summary

    def _write_report(self, summary: dict) -> None:
        """report.html beside results.parquet; a page that cannot be written is said, not fatal."""
        shown = [video_id for _, video_id, *_ in self.report.shown]
        links = {}
        for row, video_id, *_ in self.report.shown:
            links[video_id] = (
                f"{video_id}/video.mp4"
                if self.shards is None
                else f"{shard_name(row // self.shard_size)}.tar"
            )
        # a run that made nothing (a rerun of complete videos) shows the shown videos' own stage times, from
        # their metadata.json, read with the previews (at most SAMPLE of each)
        made_before = [] if self.report.stage_rows else [v for _, v, *_, old in self.report.shown if old]
        try:
            paths = {self.rows.path(f"{v}/preview.png"): ("preview", v) for v in shown}
            paths |= {self.rows.path(f"{v}/metadata.json"): ("timings", v) for v in made_before}
            found = self.rows.fs.cat(list(paths), on_error="omit") if paths else {}
            previews, timings = {}, {}
            for path, data in found.items():
                kind, video_id = paths[path]
                if kind == "preview":
                    previews[video_id] = thumbnail(data)
                else:
                    timings[video_id] = _timings(data)
            page = render(self.report, summary, previews, links, timings)
            self.outputs.write_bytes(REPORT_FILE, page.encode("utf-8"))
        except Exception as error:  # noqa: BLE001 - the results are written; the page is a view of them
            print(f"stillmotion: {_not_written(self.outputs.url_of(REPORT_FILE), error)}", file=sys.stderr)


def _timings(metadata: bytes) -> dict:
    """A video's per-stage seconds from its metadata.json; {} when it cannot be read."""
    try:
        timings = json.loads(metadata).get("timings")
    except (ValueError, AttributeError):
        return {}
    if not isinstance(timings, dict):
        return {}
    return {stage: seconds for stage, seconds in timings.items() if isinstance(seconds, int | float)}


def _progress_artifact(tracker: RunTracker, percent: float) -> None:
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    if tracker._artifact is None:
        tracker._artifact = create_progress_artifact(
            percent, key="stillmotion-progress", description="videos finished"
        )
    else:
        update_progress_artifact(tracker._artifact, percent)


def _table_artifact(rows: list[dict], summary: dict) -> None:
    from prefect.artifacts import create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is not None:
        description = ", ".join(f"{k}: {v}" for k, v in summary.items())
        create_table_artifact(rows, key="stillmotion-summary", description=f"stillmotion run — {description}")
