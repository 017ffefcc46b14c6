"""The rows of a run that need no work, and the run's stores and results: no Prefect, no torch.

`finish_if_complete` ends a rerun whose every row is current (or failed before on the same input)
without starting Prefect at all; the batch flow uses the same `open_batch` and `RowLookup` and records
its complete, failed and invalid rows the same way.
"""

from __future__ import annotations

import itertools
import json
import shlex
import time
from dataclasses import dataclass

import pyarrow.parquet as pq

from ..manifests import iter_manifest, manifest_summary
from ..manifests.schema import RESULTS_FILE
from ..shards import FORMATS, SHARD_SIZE
from ..storage import ArtifactStore, OutputStore, configure_storage
from .lookup import RowLookup, RowState
from .parts import BLOCK_ROWS, Split, manifest_fingerprint, part_name, split_of, write_marker
from .tracking import SCORE_NAMES, RunError, RunTracker

LOOKUP_ROWS = 512  # rows whose fingerprints, videos and failures are looked up together


@dataclass
class Batch:
    """A run's stores and results, and how it records the rows that need no work."""

    outputs: OutputStore
    videos: OutputStore  # where each row is published: the output, or CACHE/rows (webdataset)
    packed: bool
    cache_url: str
    total: int
    tracker: RunTracker
    previous: dict  # what earlier runs recorded of each video (see _previous_results)
    split: Split | None = None  # --num-shards/--shard-index: this index's blocks of rows only
    split_fingerprint: str | None = None  # the manifest's (parts.manifest_fingerprint)
    command: str | None = None  # how to run this index again (recorded in its completion marker)

    def owns(self, row) -> bool:
        """Whether the row is this run's: every row, or (a split) the rows of this index's blocks."""
        return self.split is None or self.split.owns(row.index)

    def close(self) -> dict:
        """Write the results (an index of a split: its part, then its completion marker last)."""
        summary = self.tracker.close()
        if self.split is not None:
            marker = (self.split, self.split_fingerprint, self.command, summary, self.videos.url)
            write_marker(self.outputs, *marker)
        return summary

    def lookup(self, model: str | None, force: bool = False) -> RowLookup:
        """The rows' states against what earlier runs left (resolving the model: no weights, no torch)."""
        from ..models.identity import inspect_model

        return RowLookup(self.videos, inspect_model(model), self.tracker.shards, force)

    def add_state(self, row, state: RowState) -> bool:
        """Record a row that needs no work (current, or failed for good on this same input); returns
        whether it was recorded."""
        if state.work:
            return False
        if state.failed:
            self.tracker.add(
                row.index,
                row.video_id,
                row.extra,
                status="failed",
                error=state.failed,
                cached=True,
                fingerprint=state.fingerprint,
            )
        else:
            self.add_complete(row, state.fingerprint)
        return True

    def add_invalid(self, row) -> None:
        self.tracker.add(
            row.index,
            row.error.video_id,  # as given, even when unsafe as a folder name: data, not a path
            row.extra,
            status="failed",
            error=f"{row.error.column}: {row.error.reason}",
        )

    def add_complete(self, row, fingerprint: str | None = None) -> None:
        """Record a row whose video exists (made by an earlier or another run)."""
        previous, outputs = self.previous.get(row.video_id), self.outputs
        self.tracker.add(
            row.index,
            row.video_id,
            row.extra,
            status="ok",
            cached=True,
            video=None if self.packed else outputs.url_of(f"{row.video_id}/video.mp4"),
            metadata=None if self.packed else outputs.url_of(f"{row.video_id}/metadata.json"),
            seconds=previous and previous["seconds"],
            scores=previous["scores"] if previous else _published_scores(self.videos, row.video_id),
            counted=row.index < self.total,
            prompts=row.request.prompts,
            fingerprint=fingerprint,
        )


def open_batch(
    manifest,
    output,
    cache,
    limit,
    force,
    show_progress,
    output_format,
    shard_size,
    num_shards=None,
    shard_index=None,
    model=None,
) -> Batch:
    """The stores (failing the run, not a row, when the output cannot be written), what killed runs
    left cleaned up, and the tracker of the run's results (of its part, for an index of a split)."""
    if not isinstance(shard_size, int) or shard_size < 1:
        raise RunError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    if output_format not in FORMATS:
        raise RunError(f"output_format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    packed = output_format == "webdataset"
    split = split_of(num_shards, shard_index, shard_size if packed else BLOCK_ROWS)
    configure_storage()  # options per protocol from the environment, never from parameters
    outputs = OutputStore(output)
    cache_url = (cache or f"{output}/.cache").rstrip("/")
    try:
        outputs.write_bytes(".stillmotion-run", f"{time.time()}\n".encode())
    except Exception as error:  # noqa: BLE001 - any failure here means "cannot write the output"
        if isinstance(error, FileExistsError | NotADirectoryError):  # a file where a folder must go
            raise RunError(
                f"cannot write to output {output}: {error.filename or output} is a file, not a folder: "
                "name a folder (new or existing)"
            ) from None
        raise RunError(f"cannot write to output {output}: {error}") from None
    videos = OutputStore(f"{cache_url}/rows") if packed else outputs
    outputs.clean_leftovers()  # leases of killed runs; their temporary files and staging folders (local)
    if packed:
        videos.clean_leftovers()
    ArtifactStore(f"{cache_url}/artifacts").clean_leftovers()
    rows, extra_fields = manifest_summary(manifest)
    total = rows if limit is None else min(rows, limit)
    fingerprint = manifest_fingerprint(manifest, limit) if split else None
    tracker = RunTracker(
        outputs,
        total,
        extra_fields,
        show_progress=show_progress,
        rows=videos,
        shard_size=shard_size if packed else None,
        repack=force,
        results_name=part_name(split, fingerprint) if split else RESULTS_FILE,
        write_report=split is None,
        counted_total=split.rows_of(total) if split else None,
    )
    if split and packed:
        sizes = {shard.size for shard in tracker.shards.existing.values()} - {shard_size}
        if sizes:
            tracker.discard()
            raise RunError(
                f"the output's shards hold {max(sizes)} rows each; an index of a split cannot repack them "
                f"(it would rewrite tars other indices read): use --shard-size {max(sizes)}, or repack once "
                "with a plain run (no --num-shards)"
            )
    batch = Batch(outputs, videos, packed, cache_url, total, tracker, _previous_results(outputs))
    if split:
        batch.split, batch.split_fingerprint = split, fingerprint
        batch.command = _command(manifest, output, cache, limit, output_format, shard_size, model, split)
    return batch


def _command(manifest, output, cache, limit, output_format, shard_size, model, split: Split) -> str:
    """The `stillmotion run` line of an index ({index} in place of its number)."""
    words = ["stillmotion", "run", manifest, "--output", output]
    words += ["--cache", cache] if cache else []
    words += ["--model", model] if model else []
    words += ["--limit", str(limit)] if limit is not None else []
    words += ["--format", output_format, "--shard-size", str(shard_size)] if output_format != "files" else []
    words += ["--num-shards", str(split.count), "--shard-index", "{index}"]
    return " ".join(shlex.quote(word) if word != "{index}" else word for word in words)


def finish_if_complete(
    manifest: str,
    output: str,
    cache: str | None = None,
    limit: int | None = None,
    show_progress: bool = False,
    output_format: str = "files",
    shard_size: int = SHARD_SIZE,
    model: str | None = None,
    num_shards: int | None = None,
    shard_index: int | None = None,
    **_,
) -> dict | None:
    """A rerun with nothing to make, without Prefect or torch: when every valid row of the run (of its
    index, in a split) is current (its video records its fingerprint) or failed before on this same
    input, the results (results.parquet and report.html, or the index's part and marker; shards whose
    files are all there) are written as the batch flow would and its summary returned; None, having
    written nothing but the run stamp, as soon as a row needs work (the batch flow then runs)."""
    b = open_batch(
        manifest, output, cache, limit, False, show_progress, output_format, shard_size,
        num_shards, shard_index, model,
    )  # fmt: skip
    rows_read = iter_manifest(manifest)
    try:
        lookup = None
        for rows in batched(itertools.islice(rows_read, b.total), LOOKUP_ROWS):
            for row in rows:
                if not b.owns(row):
                    b.tracker.skip(row.index)
            rows = [row for row in rows if b.owns(row)]
            valid = [row for row in rows if row.error is None]
            if valid and lookup is None:
                lookup = b.lookup(model)
            states = dict((row.index, state) for row, state in lookup.check(valid)) if valid else {}
            if any(state.work for state in states.values()):
                b.tracker.discard()
                return None
            for row in rows:
                if row.error is not None:
                    b.add_invalid(row)
                else:
                    b.add_state(row, states[row.index])
    except BaseException:
        b.tracker.discard()
        raise
    if b.split is None:
        describe_complete(b.videos, b.tracker, rows_read, b.add_complete)
    return b.close()


def batched(rows, size: int):
    """Lists of `size` rows (the last one shorter)."""
    rows = iter(rows)
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def describe_complete(outputs: OutputStore, tracker: RunTracker, rows, add_complete) -> None:
    """Record the valid rows among `rows` whose videos are complete (listing the output once); the
    others are left out of the results."""
    complete = None
    for row in rows:
        if row.error is None:
            complete = outputs.complete_ids() if complete is None else complete
            if row.video_id in complete:
                add_complete(row)
                continue
        tracker.skip(row.index)


def _previous_results(outputs: OutputStore) -> dict[str, dict]:
    """{video_id: {"seconds", "scores"}} of each video made by earlier runs (from the results.parquet
    they left), so a cached row keeps the time it took to make and its scores."""
    try:
        table = pq.read_table(outputs.fs.open(outputs.path(RESULTS_FILE)))
    except Exception:  # noqa: BLE001 - none yet, or unreadable: looked up per video instead
        return {}
    if not {"video_id", "status", "seconds"} <= set(table.column_names):
        return {}
    names = [name for name in SCORE_NAMES if f"score_{name}" in table.column_names]
    columns = ["video_id", "status", "seconds", *(f"score_{name}" for name in names)]
    return {
        r["video_id"]: {"seconds": r["seconds"], "scores": {n: r[f"score_{n}"] for n in names} or None}
        for r in table.select(columns).to_pylist()
        if r["status"] == "ok"
    }


def _published_scores(outputs: OutputStore, video_id: str) -> dict | None:
    """A complete video's scores from its metadata.json (when no earlier results.parquet has them)."""
    try:
        return json.loads(outputs.read_bytes(f"{video_id}/metadata.json")).get("scores")
    except Exception:  # noqa: BLE001 - unreadable or older than scores: none
        return None
