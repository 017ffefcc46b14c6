"""What each command does, given its parsed arguments; heavy imports happen inside, at call time."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from .parser import EXIT_FAILED, EXIT_OK, EXIT_ROWS_FAILED, UsageError
from .startup import (
    check_before_start,
    check_local_folder,
    device_line,
    no_captioner,
    say,
    say_new_buckets,
    unknown_storage_options,
)


def _quiet_libraries() -> None:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


class StageProgress:
    """One tqdm bar per stage, on stderr."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if stage != self.stage:
            self.close()
            self.stage, self.bar = stage, tqdm(total=total, desc=f"{stage:>9}", unit="step", leave=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_generate(args: argparse.Namespace) -> int:
    from ..models import MethodParams, ModelNotAvailable, resolve_device
    from ..models.identity import inspect_model
    from ..single import VideoRequest, artifact_cache, generate_job, generate_video, load_model
    from ..storage import check_video_folder, publish_video_folder

    try:
        params = MethodParams(
            keyframes=args.keyframes,
            frames=args.frames,
            fps=args.fps,
            seed=args.seed,
            steps=args.steps,
            curve=args.curve,
            insertion=args.insertion,
            candidates=args.candidates,
            cross_frame=args.cross_frame,
            direction=args.direction,
            direction_templates=tuple(args.direction_templates) if args.direction_templates else None,
            xa_until=args.xa_until,
            xa_schedule=args.xa_schedule,
            inbetween=args.inbetween,
            negative=args.negative,
            negative_until=args.negative_until,
            negative_from=args.negative_from,
            edit_from=args.edit_from,
            inject_features=args.inject_features,
            inject_layers=tuple(args.inject_layers) if args.inject_layers else None,
            inject_mode=args.inject_mode,
            xa_guidance=args.xa_guidance,
            cfg_scale=args.cfg_scale,
            batch_size=args.batch_size,
        )
        request = VideoRequest(
            video_id=Path(args.out).name or "video",
            prompts=tuple(args.prompt),
            params=params,
            image=args.image,
            source_prompt=args.source_prompt,
            caption=args.caption,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    # fail on a bad output, device, model, captioner or input before loading any model
    check_video_folder(args.out)
    resolve_device(args.device)
    info = inspect_model(args.model)  # a missing folder, or a hub id not available here
    if args.image is not None:
        from ..models import fit_image, open_image
        from ..single import read_bytes

        if not args.caption and (missing := no_captioner(info.path)):
            raise ModelNotAvailable(f"cannot caption --image: {missing}; pass --caption TEXT")
        fit_image(open_image(read_bytes(args.image), args.image), 8)
    with artifact_cache(args.cache) as cache_url:
        job = generate_job(
            request,
            info,
            out=args.out,
            cache_url=cache_url,
            device=args.device,
            dtype=args.dtype,
            channels_last=args.channels_last,
            compile_unet=args.compile_unet,
        )
        try:
            load_model(job)  # a layer the UNet lacks fails here, before any work
        except ValueError as error:
            raise UsageError(str(error)) from None
        progress = StageProgress()
        try:
            files, metadata = generate_video(job, progress)
        finally:
            progress.close()
    out = Path(args.out).resolve()
    publish_video_folder(str(out), files, metadata)
    print(f"wrote {metadata['frame_count']} frames at {metadata['fps']} fps: {out / 'video.mp4'}")
    print(f"caption: {metadata['caption']}")
    return EXIT_OK


def _storage_options(text: str | None) -> dict:
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--storage-options is not valid JSON: {error.msg}") from None
    if not isinstance(options, dict):
        raise UsageError("--storage-options must be a JSON object")
    return options


def _configure_storage(options_json: str | None, *urls: str | None) -> None:
    """--storage-options apply to the protocol of every remote URL given; set in the environment too,
    so worker processes inherit them (never as flow parameters, which Prefect's UI shows)."""
    from ..storage import STORAGE_OPTIONS_ENV, configure_storage, protocol_of

    options = _storage_options(options_json)
    if not options:
        return
    protocols = {protocol_of(url) for url in urls if url} - {"file"}
    for protocol in sorted(protocols):
        unknown = unknown_storage_options(protocol, options)
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            raise UsageError(
                f"--storage-options: {protocol}:// storage (s3fs) has no option {names}; it takes "
                "endpoint_url, key, secret, token, anon, client_kwargs, config_kwargs, profile, ..."
            )
    by_protocol = {protocol: options for protocol in protocols}
    os.environ[STORAGE_OPTIONS_ENV] = json.dumps(by_protocol)
    configure_storage(by_protocol)


def _require_server(what: str) -> None:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise UsageError(
            f"{what} needs a real Prefect server: start one with `prefect server start --host 127.0.0.1 "
            "--port 4200` and `export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )


def _task_runner(args: argparse.Namespace, stack: contextlib.ExitStack):
    """None for the flow's own thread runner, else a DaskTaskRunner (one "GPU" slot per worker).

    A local cluster is started here, for the whole run, and joined by address: every chunk subflow
    gets a copy of the runner, and a copy made from cluster settings would start a new cluster.
    """
    if args.runner == "local":
        if args.dask_address or args.dask_workers:
            raise UsageError("--dask-address and --dask-workers need --runner dask")
        return None
    _require_server("--runner dask")
    from prefect_dask import DaskTaskRunner

    if args.dask_address:
        return DaskTaskRunner(address=args.dask_address)
    import torch

    workers = args.dask_workers or torch.cuda.device_count() or 2
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=2, resources={"GPU": 1}, dashboard_address=None
    )
    stack.enter_context(cluster)
    return DaskTaskRunner(address=cluster.scheduler_address)


def _flow_parameters(args: argparse.Namespace) -> dict:
    """The batch flow's parameters that `run` and `serve` share (`run` adds limit, force, progress)."""
    names = (
        "manifest output cache model device dtype channels_last compile_unet in_flight chunk_rows batch_size "
        "model_scores output_format shard_size"
    )
    if getattr(args, "command", None) == "run":
        names += " num_shards shard_index"
    return {name: getattr(args, name) for name in names.split()}


def _set_gpu_slots(mode: str | None) -> None:
    """--gpu-slots for this process and those it starts (a local Dask cluster, a served run). Imports
    nothing: Prefect, once imported, keeps the logging settings it found (`run` sets them first)."""
    if mode is not None:
        os.environ["STILLMOTION_GPU_SLOTS"] = mode  # stillmotion/slots.py SLOTS_ENV


def cmd_run(args: argparse.Namespace) -> int:
    from ..flows.tracking import count_from

    # the summary and report.html count from the process's start (see cli.main), imports included
    count_from(getattr(args, "started", None))
    try:
        return _cmd_run(args)
    finally:
        count_from(None)


def _own_prefect_home(args: argparse.Namespace) -> None:
    """An index of a split with no Prefect server runs its own embedded one in its own PREFECT_HOME
    (several embedded servers on one SQLite home conflict): HOME/stillmotion-index-N-K. Before Prefect is
    imported; nothing when PREFECT_API_URL names a server."""
    from ..flows.parts import split_of

    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return
    split = split_of(args.num_shards, args.shard_index, 1)
    if split is not None:
        home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
        home = home / f"stillmotion-index-{split.count}-{split.index}"
        home.mkdir(parents=True, exist_ok=True)  # its SQLite database cannot be created in a missing folder
        os.environ["PREFECT_HOME"] = str(home)


def _cmd_run(args: argparse.Namespace) -> int:
    _configure_storage(args.storage_options, args.manifest, args.output, args.cache)
    check_local_folder("--output", args.output)
    check_local_folder("--cache", args.cache)
    _set_gpu_slots(args.gpu_slots)
    # row failures are reported in results.parquet and .logs/, not as tracebacks on the terminal;
    # set before a local Dask cluster starts, so its worker processes inherit it
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    # Prefect's own machinery logs apart: its event worker reported "Service 'EventsWorker' failed"
    # dozens of times per run here (Prefect 3.9.1, runs unaffected), each on a terminal line
    os.environ.setdefault("PREFECT_INTERNAL_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the embedded server (started below, with this environment) stores no events: it records task runs
    # from the event stream either way, and the stored events were 78 of the 108 KB of database each row
    # added (benchmarks/RESULTS.md, 2026-12-03). A real server keeps its own settings (README)
    os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED", "false")
    # the embedded server's first start on a fresh PREFECT_HOME (migrations) took 40 s on a busy
    # 2-core machine, past Prefect's default wait
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    _own_prefect_home(args)
    from ..manifests import manifest_warnings
    from .signals import Interrupts, interrupt_types, start_detached_server

    for warning in manifest_warnings(args.manifest):  # a misspelt option column, say
        say(f"warning: {warning}")
    # SIGINT and SIGTERM stop the run within seconds: the flow writes results.parquet for the rows that
    # finished, one line is printed and the process exits 130 / 143 (see signals.py)
    with Interrupts() as interrupts, contextlib.ExitStack() as stack:
        results_before = None
        try:
            say_new_buckets(args.output, args.cache)
            results_before = _results_stamp(args.output)
            if not args.force:  # a rerun with nothing to make needs no Prefect server, no Dask, no model
                from ..flows.resume import finish_if_complete

                with _storage_failures():
                    # seconds at most, so no progress bar; a run that goes on shows its own
                    summary = finish_if_complete(**_flow_parameters(args), limit=args.limit)
                if summary is not None:
                    return _summarise(args, summary)
            # rows to make: what can fail the run fails now, before seconds of imports and server start-up
            check_before_start(args)
            say("loading torch and the model libraries")
            _quiet_libraries()
            device = device_line(args) if args.runner == "local" else None
            runner = _task_runner(args, stack)
            if runner is None:
                from prefect.settings import PREFECT_API_URL

                if not PREFECT_API_URL.value():
                    say("starting the Prefect server (PREFECT_API_URL uses a running one instead)")
                start_detached_server()  # out of the terminal's process group, so Ctrl-C spares it
            where = f"on {device}" if device else "on each Dask worker's device"
            say(f"making the videos: the model loads {where} with the first row that needs it")
            return _run(args, runner)
        except interrupt_types() as error:
            interrupts.note(error)
            _stop_interrupted(args, interrupts, stack, results_before)


def _run(args: argparse.Namespace, runner) -> int:
    from ..flows import batch_flow
    from .signals import interruptible_runner

    # the flow's own thread runner, made not to wait for running stages once interrupted
    if runner is None:
        runner = interruptible_runner(batch_flow.task_runner)
    flow = batch_flow if runner is batch_flow.task_runner else batch_flow.with_options(task_runner=runner)
    parameters = {**_flow_parameters(args), "limit": args.limit, "force": args.force}
    for attempt in range(1, PREFECT_CONFLICT_TRIES + 1):
        try:
            with _storage_failures():
                summary = flow(**parameters, show_progress=not args.no_progress)
            break
        except Exception as error:
            if not _prefect_conflict(error):
                raise
            if attempt == PREFECT_CONFLICT_TRIES:
                from ..flows.tracking import RunError

                raise RunError(
                    f"Prefect's API refused to record the run {attempt} times (409 Conflict: a data "
                    "integrity conflict in its database); is another process writing the same "
                    "Prefect database? Point every run at one server with PREFECT_API_URL"
                ) from None
            # everything made so far is complete or cached: running the flow again only resumes it
            print(
                f"stillmotion run: Prefect's API answered 409 Conflict; trying again "
                f"({attempt}/{PREFECT_CONFLICT_TRIES - 1})",
                file=sys.stderr,
            )
            time.sleep(PREFECT_CONFLICT_WAIT_S)
    return _summarise(args, summary)


@contextlib.contextmanager
def _storage_failures():
    """Storage that kept failing past the retries, outside any row: one line (a RunError)."""
    try:
        yield
    except OSError as error:
        if isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError):
            raise  # a missing manifest, say: a user error of its own (one line)
        from ..flows.tracking import RunError
        from ..tasks.stages import one_line

        raise RunError(
            f"storage failed during the run ({one_line(error)}); the videos made are kept: run again to "
            "resume"
        ) from None


def _summarise(args: argparse.Namespace, summary: dict) -> int:
    """The run's one summary line (and its failed rows on stderr); returns the exit status. Its seconds
    are the process's so far (see cli.main): the flow's own end (report.html, Prefect's last calls)
    included."""
    if getattr(args, "started", None) is not None:
        summary = {**summary, "seconds": round(time.monotonic() - args.started, 2)}
    repaired = f" ({summary['repaired']} repaired a damaged artifact)" if summary.get("repaired") else ""
    if summary.get("changed"):
        repaired += f" ({summary['changed']} made again: their rows changed)"
    print(
        f"{summary['rows']} rows: {summary['done']} made{repaired}, {summary['cached']} already complete, "
        f"{summary['failed']} failed in {summary['seconds']} s; "
        f"results: {summary.get('results') or args.output.rstrip('/') + '/results.parquet'}"
    )
    busy = summary.get("shards", {}).get("busy")
    if busy:  # another live run holds their leases: it packs them
        print(f"shards left to another run packing them: {', '.join(busy)}", file=sys.stderr)
    if summary["failed"]:
        _print_failures(args.output, summary)
        return EXIT_ROWS_FAILED
    return EXIT_OK


# Two processes writing one SQLite Prefect database (two embedded servers on one PREFECT_HOME) once made
# a flow run's insert fail a FOREIGN KEY check, which the API answers 409 Conflict: the run is tried again
PREFECT_CONFLICT_TRIES = 3
PREFECT_CONFLICT_WAIT_S = 1.0


def _prefect_conflict(error: BaseException | None) -> bool:
    """Whether an error is (or was caused by) Prefect's API answering 409 Conflict."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        response = getattr(error, "response", None)
        if getattr(response, "status_code", None) == 409:
            return True
        error = error.__cause__ or error.__context__
    return False


def _print_failures(output: str, summary: dict) -> None:
    """The failed rows on stderr (the first few, `video_id: reason`), and where the rest is."""
    from ..storage import OutputStore

    shown = summary.get("failures", [])
    for failure in shown:
        print(
            f"  failed: {failure['video_id']!r} (row {failure['row']}): {failure['error']}", file=sys.stderr
        )
    where = summary.get("results") or f"{output.rstrip('/')}/results.parquet"
    logs = summary.get("logs", f"{output.rstrip('/')}/.logs")  # the cache's with --format webdataset
    try:
        store = OutputStore(logs)
        has_logs = bool(store.fs.glob(store.path("*.txt")))
    except Exception:  # noqa: BLE001 - an unreachable output: do not point at logs we cannot see
        has_logs = False
    if has_logs:
        where += f" and tracebacks in {logs}/"
    more = summary["failed"] - len(shown)
    print(
        f"{summary['failed']} failed rows{f' ({more} not shown)' if more > 0 else ''}: see {where}",
        file=sys.stderr,
    )


def _results_stamp(output: str):
    """What the output's results.parquet looks like now (fsspec's info; None if there is none), to
    tell after an interrupt whether this run wrote it."""
    from ..storage import OutputStore

    try:
        store = OutputStore(output)
        return store.fs.info(store.path("results.parquet"))
    except Exception:  # noqa: BLE001 - none yet, or the output is unreachable: nothing to compare
        return None


def _finished_rows(output: str, before) -> tuple[int, int] | None:
    """(ok, failed) rows of the results.parquet this run wrote; None if it wrote none."""
    import pyarrow.parquet as pq

    from ..storage import OutputStore

    try:
        store = OutputStore(output)
        path = store.path("results.parquet")
        if store.fs.info(path) == before:
            return None
        with store.fs.open(path) as handle:
            status = pq.read_table(handle, columns=["status"]).column("status").to_pylist()
    except Exception:  # noqa: BLE001 - not written (or not readable): say so, do not fail the exit
        return None
    return status.count("ok"), status.count("failed")


def _stop_interrupted(args: argparse.Namespace, interrupts, stack: contextlib.ExitStack, before) -> NoReturn:
    """The end of an interrupted run: one line on stderr, the embedded server and a local Dask cluster
    stopped, and an exit without waiting for the model stages still running in worker threads."""
    import logging
    import threading

    from .signals import exit_now, stop_default_server

    # from here on nothing but the one line reaches the terminal: stopping the server makes Prefect's
    # event worker log an error per lost connection, on loggers that PREFECT_LOGGING_LEVEL does not quiet
    logging.disable(logging.CRITICAL)
    results = f"{args.output.rstrip('/')}/results.parquet"
    finished = _finished_rows(args.output, before)
    if finished is None:
        outcome = "no results.parquet written"
    else:
        ok, failed = finished
        outcome = f"{ok} rows finished" + (f", {failed} failed" if failed else "") + f", results: {results}"
    closing = threading.Thread(target=stack.close, daemon=True)  # a local Dask cluster, if any
    closing.start()
    stop_default_server()
    closing.join(timeout=10)
    exit_now(
        interrupts.exit_status,
        f"stillmotion run: interrupted ({interrupts.name}): {outcome}; run again to resume",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    _configure_storage(args.storage_options, args.manifest, args.output, args.cache)
    _set_gpu_slots(args.gpu_slots)
    _require_server("serve")
    from prefect.types.entrypoint import EntrypointType

    from ..flows import batch_flow

    batch_flow.serve(
        name=args.name,
        cron=args.cron,
        parameters=_flow_parameters(args),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return EXIT_OK


def cmd_gpu_slots(args: argparse.Namespace) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    _require_server("gpu-slots")
    from ..models.loading import resolve_device
    from ..slots import ensure_slot, slot_name

    if args.device:
        devices = [str(resolve_device(device)) for device in args.device]
    else:
        import torch

        devices = [f"cuda:{index}" for index in range(torch.cuda.device_count())] + ["cpu"]
    for device in devices:
        name = slot_name(device)
        print(f"{name}: {ensure_slot(name)} (limit 1)")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from ..manifests import print_validation

    _configure_storage(args.storage_options, args.manifest)
    return print_validation(args.manifest)


def cmd_merge(args: argparse.Namespace) -> int:
    """results.parquet and report.html from a split run's parts; exit 1 when an index is missing or
    incomplete (with the commands that rerun them), 3 when rows failed."""
    from ..flows.parts import merge

    _configure_storage(args.storage_options, args.output)
    with _storage_failures():
        summary, parts = merge(args.output)
    status = _summarise(args, summary)
    if not parts.whole:
        for what, indices in (("missing", parts.missing), ("incomplete", parts.incomplete)):
            if indices:
                shown = ", ".join(map(str, indices))
                print(f"stillmotion merge: {what} indices of {parts.count}: {shown}", file=sys.stderr)
        print("stillmotion merge: run them again (then merge):", file=sys.stderr)
        for command in parts.rerun_commands():
            print(f"  {command}", file=sys.stderr)
        return EXIT_FAILED
    return status


def cmd_train_toy(args: argparse.Namespace) -> int:
    import torch

    from ..toyworld.train import check_recipe, train_toy_model

    try:
        check_recipe(args.unsized, args.vae_from, args.unet_from, args.small)
    except ValueError as error:
        raise UsageError(str(error)) from None
    torch.set_num_threads(os.cpu_count() or 1)
    train_toy_model(
        args.dir,
        args.vae_steps,
        args.unet_steps,
        args.seed,
        args.images,
        log=lambda line: print(line, flush=True),
        vae_minutes=args.max_minutes,
        unet_minutes=args.max_minutes,
        hues=args.hues,
        vae_from=args.vae_from,
        unsized=args.unsized,
        unet_from=args.unet_from,
        lr=args.lr,
        small=args.small,
        shape_weight=args.shape_weight,
    )
    return EXIT_OK


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from ..models.tiny import make_tiny_model

    path = make_tiny_model(args.dir, seed=args.seed)
    print(f"wrote a tiny random model to {path} (use it with --model {path})")
    return EXIT_OK
