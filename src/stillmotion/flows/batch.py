"""The batch flow: a Parquet manifest in, one chain of cached tasks per row, videos and results out.

    batch_flow("manifest.parquet", "s3://bucket/run")   # or: stillmotion run MANIFEST --output URL

Rows stream from the manifest; a row whose video is complete is skipped by a lookup (no task,
no model load); the others get a chain source -> caption -> invert -> keyframes -> frames ->
publish (+ encode, scores), with at most `in_flight` rows submitted at once. The rows that need
work are taken in spans of `chunk_rows` rows and each span runs in its own subflow: Prefect keeps every task
run's state in its flow run until that flow run ends, so per-span subflows keep memory flat at any
manifest size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prefect import flow
from prefect.context import FlowRunContext
from prefect.exceptions import ExternalSignal
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from ..manifests import iter_manifest
from ..models.loading import resolve_device
from ..shards import SHARD_SIZE
from ..storage import DamagedArtifact, LeaseKeeper, OutputStore
from ..tasks import (
    Job,
    caption_stage,
    encode_stage,
    finish_stage,
    frames_stage,
    invert_stage,
    keyframes_stage,
    publish_stage,
    scores_stage,
    source_stage,
)
from ..tasks.runtime import check_gpu_slot, run_scorers
from ..tasks.stages import row_chain
from .lookup import RowLookup
from .resume import LOOKUP_ROWS, batched, describe_complete, open_batch
from .tracking import RunError, RunTracker

DEFAULT_IN_FLIGHT = 4  # rows submitted at once on the local runner (one device: overlaps I/O and compute)
INFLIGHT_REFRESH_S = 5.0  # how often a Dask run reads its cluster's size again
SPAN_REACH = 10  # a span of work closes at most this many x chunk_rows manifest rows past its first job


def _stages() -> dict:
    """The row's tasks. No Prefect result records or cache: each stage looks its own artifact up (and
    under --force makes it again)."""
    return {
        "source": source_stage,
        "caption": caption_stage,
        "invert": invert_stage,
        "keyframes": keyframes_stage,
        "frames": frames_stage,
        "encode": encode_stage,
        "scores": scores_stage,
        "publish": publish_stage,
        "finish": finish_stage,  # encode + scores + publish in one task run (what the flow submits)
    }


def _is_dask(runner) -> bool:
    return type(runner).__name__ == "DaskTaskRunner"


def gpu_slot(runner) -> contextlib.AbstractContextManager:
    """Under Dask, model stages take a worker's one "GPU" resource, so no worker runs two at once."""
    if not _is_dask(runner):
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources={"GPU": 1})


GPU_STAGES = {"caption", "invert", "keyframes", "frames"}  # each takes a GPU resource on Dask


def submit_row(stages: dict, job: Job, runner=None) -> list[PrefectFuture]:
    """Submit one row's chain of tasks; returns its futures, the publish future last."""
    futures: list[PrefectFuture] = []

    def submit(name: str, *inputs):
        with gpu_slot(runner) if name in GPU_STAGES else contextlib.nullcontext():
            futures.append(stages[name].submit(job, *inputs))
        return futures[-1]

    source, caption, inverted, keyframes, frames = row_chain(job, submit)
    with gpu_slot(runner) if job.scorers else contextlib.nullcontext():
        published = stages["finish"].submit(job, source, caption, inverted, keyframes, frames)
    return [*futures, published]


@dataclass
class _Span:
    """One span's rows of work and where their results go; lives in the batch flow's process."""

    work: list
    tracker: RunTracker
    outputs: OutputStore  # where the rows' folders are published: the output, or CACHE/rows (webdataset)
    stages: dict
    in_flight: int | None  # rows submitted at once; None: what the task runner can hold (InFlight)
    add_complete: Callable  # records a row whose video exists (made by an earlier or another run)
    lookup: RowLookup  # whether a row's video, made by another run meanwhile, is the one it asks for


# Live spans by id. The chunk subflow takes the id, not the objects: Prefect serialises the flow run's
# context (the flow included) to send tasks to Dask, and the tracker (a Parquet writer) cannot be.
_SPANS: dict[str, _Span] = {}


# Flow functions are pickled by value (their module names hold the flow objects), by Prefect's context
# for Dask and by a served deployment's runner; a by-value copy gets its own copies of module globals.
# So _SPANS is only ever touched through these functions, which pickle by reference.
def _open_span(span: _Span) -> str:
    key = uuid.uuid4().hex
    _SPANS[key] = span
    return key


def _span(key: str) -> _Span:
    return _SPANS[key]


def _close_span(key: str) -> None:
    del _SPANS[key]


LEASE_POLL_S = 2.0  # how often a run looks again at rows another run is making
REPAIR_ROUNDS = 3  # resubmissions of a row whose chain met a damaged artifact (deleted when found)


def _found_damage(futures: list[PrefectFuture]) -> bool:
    """Whether the first failed stage of a row failed on a damaged artifact (storage.DamagedArtifact)."""
    failed = next((f for f in futures if f.state.is_failed()), None)
    if failed is None:
        return False
    error = failed.state.result(raise_on_failure=False)
    return isinstance(error, DamagedArtifact) or "DamagedArtifact" in (failed.state.message or "")


def _finish(span: _Span, runner, row, job: Job, futures: list[PrefectFuture], started: float) -> None:
    """Wait for a row's chain, record it, and let go of the row's lease."""
    try:
        _record(span, runner, row, job, futures, started)
    finally:
        span.outputs.release_lease(row.video_id)


def _record(span: _Span, runner, row, job: Job, futures: list[PrefectFuture], started: float) -> None:
    """Record a row's outcome. A chain that failed on a damaged artifact is submitted again
    (REPAIR_ROUNDS times at most): the damaged artifact was deleted, so its Prefect record no longer
    counts, that stage computes it again and every intact stage before it is a cache hit."""
    repaired = False
    for _ in range(REPAIR_ROUNDS):
        futures[-1].wait()
        if futures[-1].state.is_completed() or not _found_damage(futures):
            break
        repaired = True
        futures = submit_row(span.stages, job, runner)
    published = futures[-1]
    published.wait()
    tracker, outputs = span.tracker, span.outputs
    if published.state.is_completed():
        result = published.result()
        packed = tracker.shards is not None  # the row's files go into a shard, not a folder of the output
        tracker.add(
            row.index,
            row.video_id,
            row.extra,
            status="ok",
            video=None if packed else result["video"],
            metadata=None if packed else result["metadata"],
            seconds=time.monotonic() - started,
            repaired=repaired,
            scores=result.get("scores"),
            prompts=job.request.prompts,
            timings=result.get("timings"),
            fingerprint=job.fingerprint,
            changed=job.changed,
        )
        return
    reason = outputs.read_log_reason(row.video_id)
    if reason is None:  # failed before a task could log (e.g. upstream never ran)
        failed = next((f for f in futures if f.state.is_failed()), published)
        reason = failed.state.message or f"task {failed.state.name}"
    tracker.add(
        row.index,
        row.video_id,
        row.extra,
        status="failed",
        error=reason,
        seconds=time.monotonic() - started,
        fingerprint=job.fingerprint,
    )


@flow(
    name="stillmotion-chunk",
    flow_run_name="rows-{first_row}",
    validate_parameters=False,
    log_prints=True,
)
def chunk_flow(span: str, first_row: int, rows: int) -> None:
    """Run one span's rows of work (rows first_row.. of the manifest, `rows` of them) in a subflow of
    the batch flow, on a fresh copy of the batch flow's task runner."""
    s = _span(span)
    runner, pending = FlowRunContext.get().task_runner, deque()
    window = InFlight(runner, s.in_flight)

    def start(work: list) -> list:
        """Submit the rows this run can claim; returns those another live run is making."""
        elsewhere = []
        for row, job in work:
            if not s.outputs.take_lease(row.video_id):
                elsewhere.append((row, job))
                continue
            if not job.force and s.lookup.is_current(row.video_id, job.fingerprint):  # made meanwhile
                s.outputs.release_lease(row.video_id)
                s.add_complete(row, job.fingerprint)
                continue
            pending.append((row, job, submit_row(s.stages, job, runner), time.monotonic()))
            while len(pending) >= window.size():
                _finish(s, runner, *_first_finished(pending))
        return elsewhere

    try:
        _run_span(s, runner, pending, start)
    finally:  # an interrupt or an error: the rows not finished are given back at once
        for row, *_ in pending:
            s.outputs.release_lease(row.video_id)


def _first_finished(pending: deque) -> tuple:
    """Take out of `pending` the row whose chain finishes first (any order: a slow row holds up none)."""
    done = next(as_completed([futures[-1] for _, _, futures, _ in pending]))
    item = next(item for item in pending if item[2][-1] is done)
    pending.remove(item)
    return item


class InFlight:
    """How many rows a span keeps submitted: the run's --in-flight, else what the task runner can hold:
    under Dask twice the cluster's GPU resources (its workers where none declare one), re-read every
    INFLIGHT_REFRESH_S as workers join or leave; on the local thread runner DEFAULT_IN_FLIGHT."""

    def __init__(self, runner, given: int | None) -> None:
        self.runner, self.given = runner, given
        self._size, self._read, self._said = DEFAULT_IN_FLIGHT, float("-inf"), None

    def size(self) -> int:
        if self.given is not None:
            return self.given
        if not _is_dask(self.runner):
            return DEFAULT_IN_FLIGHT
        if time.monotonic() - self._read > INFLIGHT_REFRESH_S:
            self._read = time.monotonic()
            try:
                workers = self.runner.client.scheduler_info()["workers"]
            except Exception:  # noqa: BLE001 - a scheduler briefly unreachable: keep the last size
                return self._size
            size = cluster_rows(workers)
            if size != self._said:  # on the terminal, not through Prefect's logger (a run keeps that quiet)
                sys.stderr.write(f"stillmotion: rows in flight: {size} ({len(workers)} Dask workers)\n")
                self._said = size
            self._size = size
        return self._size


def cluster_rows(workers: dict) -> int:
    """Rows in flight for a Dask cluster: 2 x its GPU resources (or 2 x its workers when none has one)."""
    gpus = sum(float(w.get("resources", {}).get("GPU", 0)) for w in workers.values())
    return max(1, 2 * int(gpus if gpus else len(workers)))


def _run_span(s: _Span, runner, pending: deque, start) -> None:
    elsewhere = start(s.work)
    while True:
        while pending:
            _finish(s, runner, *_first_finished(pending))
        # rows another run holds: recorded once it has made them, made here if it let go (failed, died)
        waiting = []
        for row, job in elsewhere:
            if s.lookup.is_current(row.video_id, job.fingerprint):  # made by the run that held it
                s.add_complete(row, job.fingerprint)
            else:
                waiting.append((row, job))
        if not waiting:
            break
        elsewhere = start(waiting)
        if elsewhere and not pending:
            time.sleep(LEASE_POLL_S)


@flow(name="stillmotion-batch", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=True)
def batch_flow(
    manifest: str,
    output: str,
    cache: str | None = None,
    model: str | None = None,
    limit: int | None = None,
    force: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    in_flight: int | None = None,
    show_progress: bool = False,
    channels_last: bool = False,
    compile_unet: str | None = None,
    chunk_rows: int = 500,
    batch_size: int | None = None,
    model_scores: bool = True,
    output_format: str = "files",
    shard_size: int = SHARD_SIZE,
    num_shards: int | None = None,
    shard_index: int | None = None,
) -> dict:
    """Make every video of a manifest; returns the counts {rows, done, cached, failed, seconds}.

    `output_format` "files" publishes a folder per video; "webdataset" packs the rows into tar shards
    of `shard_size` rows (see stillmotion.shards), the rows' folders living in CACHE/rows.
    `num_shards` and `shard_index` (or a launcher's environment, see flows/parts.py) make only this
    index's blocks of rows and write its part of the results, merged by `stillmotion merge`."""
    for name, value in (
        ("chunk_rows", chunk_rows),
        ("in_flight", 1 if in_flight is None else in_flight),
        ("batch_size", 1 if batch_size is None else batch_size),
    ):
        if not isinstance(value, int) or value < 1:
            raise RunError(f"{name} must be an integer >= 1, got {value!r}")
    # 1. stores and the results (see open_batch)
    b = open_batch(
        manifest, output, cache, limit, force, show_progress, output_format, shard_size,
        num_shards, shard_index, model,
    )  # fmt: skip
    tracker, videos, cache_url, total = b.tracker, b.videos, b.cache_url, b.total

    # 2. stream rows: failed and complete rows are recorded at once, the rest become task chains,
    #    run `chunk_rows` rows of work at a time, each span's work in a subflow. A span also closes
    #    once it reaches SPAN_REACH x chunk_rows manifest rows past its first job, so that rows
    #    finished meanwhile (kept in order by the tracker until that job is done) stay bounded.
    def run_span(work: list) -> None:
        span = _open_span(_Span(work, tracker, videos, stages, in_flight, b.add_complete, lookup))
        try:
            # the batch flow's configured runner, not the started one of its run (which cannot be
            # serialised); Prefect runs each subflow on a fresh duplicate of it. The span's leases are
            # renewed while it runs, so no other machine takes over a row that takes hours.
            with LeaseKeeper(videos):
                chunk_flow.with_options(task_runner=FlowRunContext.get().flow.task_runner)(
                    span=span, first_row=work[0][0].index, rows=len(work)
                )
        finally:
            _close_span(span)

    work: list = []
    stages = None  # tasks configured, device checked, only when some row needs work
    lookup = None  # the model resolved (no weights), only when some row is valid
    rows_read = iter_manifest(manifest)
    reached: list = []  # the batch of rows being looked at (described on an interrupt)
    try:
        for reached in batched(itertools.islice(rows_read, total), LOOKUP_ROWS):
            for row in reached:
                if not b.owns(row):  # another index's block
                    tracker.skip(row.index)
            reached = [row for row in reached if b.owns(row)]
            valid = [row for row in reached if row.error is None]
            if valid and lookup is None:
                lookup = b.lookup(model, force)
            states = dict((row.index, state) for row, state in lookup.check(valid)) if valid else {}
            for row in reached:
                if work and (
                    len(work) >= chunk_rows or row.index - work[0][0].index >= SPAN_REACH * chunk_rows
                ):
                    run_span(work)
                    work = []
                if row.error is not None:
                    b.add_invalid(row)
                    continue
                state = states[row.index]
                if b.add_state(row, state):  # current, or failed before on this same input
                    continue
                if stages is None:
                    stages = _stages()
                    if not _is_dask(FlowRunContext.get().flow.task_runner):
                        resolve_device(device)  # a missing GPU stops the run at once, as a missing model does
                        check_gpu_slot(device)  # and so does a missing GPU slot, when slots are on
                    found = run_scorers(lookup.info.path) if model_scores else {}
                job = _job(
                    row,
                    state,
                    lookup.info,
                    videos,
                    cache_url,
                    device,
                    dtype,
                    force,
                    channels_last,
                    compile_unet,
                    batch_size,
                )
                job = dataclasses.replace(job, scorers=found or None)
                work.append((row, job))
            reached = []
        if work:
            run_span(work)
            work = []
    except (KeyboardInterrupt, ExternalSignal):  # Ctrl-C, or a stop signal
        # results.parquet still describes every row that finished or whose video exists: the unfinished
        # rows of the interrupted span and the rows not reached are looked up, then the interrupt goes on
        unfinished = [row for row, _ in work if not tracker.has(row.index)]
        unfinished += [
            row
            for row in reached
            if not tracker.has(row.index) and row.index not in {r.index for r in unfinished}
        ]
        describe_complete(videos, tracker, sorted(unfinished, key=lambda r: r.index), b.add_complete)
        left = (row for row in rows_read if row.index < total and b.owns(row))
        describe_complete(videos, tracker, left, b.add_complete)
        tracker.close()  # an interrupted index writes its part, never its completion marker
        raise
    # 3. the rows past --limit whose videos exist are in results.parquet too, by one listing
    if b.split is None:
        describe_complete(videos, tracker, rows_read, b.add_complete)

    # 4. results.parquet and the summary
    return b.close()


def _job(
    row, state, info, outputs, cache_url, device, dtype, force, channels_last, compile_unet, batch_size
) -> Job:
    return Job.on_model(
        info,
        video_id=row.video_id,
        request=state.request,  # resolved: the model's defaults where none was given
        param_sources=state.param_sources,
        fingerprint=state.fingerprint,
        changed=state.changed,
        output_url=outputs.url,
        cache_url=cache_url,
        device=device,
        dtype=dtype,
        force=force,
        channels_last=channels_last,
        compile_unet=compile_unet,
        batch_size=batch_size,
    )
