"""The `stillmotion` command: generate, run, validate, make-tiny-model (DESIGN section 3).

Exit statuses: 0 success; 1 the command could not do its job; 2 usage error; `run` exits 3
when it finished but some rows failed. Errors a user can fix print one line, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ROWS_FAILED = 0, 1, 2, 3


class UsageError(Exception):
    """A bad argument: exit status 2."""


def _add_flow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--in-flight", type=_positive("--in-flight"), default=4, help="rows submitted at once (4)"
    )
    parser.add_argument(
        "--chunk-rows",
        type=_positive("--chunk-rows"),
        default=500,
        help="rows of work per subflow (500): Prefect holds a flow run's task states until it ends",
    )


def _positive(name: str, minimum: int = 1):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="hub id or local folder of a Stable Diffusion model in diffusers layout, safetensors only "
        "(default: $STILLMOTION_MODEL or CompVis/stable-diffusion-v1-4)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument(
        "--channels-last", action="store_true", help="channels-last memory format for UNet and VAE (GPUs)"
    )
    parser.add_argument(
        "--compile",
        metavar="BACKEND",
        dest="compile_unet",
        help="torch.compile the UNet blocks with this backend (e.g. inductor; GPUs; first steps are slow)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="auto: bf16/fp16 on CUDA, fp32 on CPU",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stillmotion",
        description="Training-free video generation from a single image (or prompt) with Stable Diffusion.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser(
        "generate",
        help="make one video from an image or a source prompt",
        description="Make one video: BLIP caption, regularized DDIM inversion, guided key frames along the "
        "prompt schedule, spline frames, MP4. Writes video.mp4, source.png, keyframes/, preview.png and "
        "metadata.json (last) into --out.",
    )
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--image", metavar="PATH_OR_URL", help="input image (any size; EXIF-oriented, center-cropped)"
    )
    source.add_argument(
        "--source-prompt", metavar="TEXT", help="synthetic mode: render this prompt as the source"
    )
    gen.add_argument(
        "--prompt",
        action="append",
        required=True,
        metavar="TEXT",
        help="target prompt of one segment; repeat for a schedule "
        "(segment i goes from prompt i-1 to prompt i)",
    )
    gen.add_argument("--out", required=True, metavar="DIR", help="output folder for this video")
    gen.add_argument("--caption", help="use this caption instead of BLIP's (real mode)")
    gen.add_argument(
        "--keyframes", type=_positive("--keyframes"), default=6, help="key frames per segment (6)"
    )
    gen.add_argument("--frames", type=_positive("--frames"), help="output frames per segment (4 x keyframes)")
    gen.add_argument("--fps", type=_positive("--fps"), default=8, help="frames per second, 1-120 (8)")
    gen.add_argument("--seed", type=_positive("--seed", 0), default=0, help="random seed (0)")
    gen.add_argument("--steps", type=_positive("--steps"), default=50, help="DDIM steps (50)")
    gen.add_argument("--curve", choices=["log", "linear"], default="log", help="edit-weight curve (log)")
    gen.add_argument(
        "--xa-guidance",
        type=_non_negative_float,
        help="cross-attention guidance step (0.1 real, 0.15 synthetic)",
    )
    gen.add_argument(
        "--cfg-scale", type=_non_negative_float, default=5.0, help="classifier-free guidance (5.0)"
    )
    gen.add_argument(
        "--batch-size", type=_positive("--batch-size"), default=8, help="key frames per UNet batch (8)"
    )
    _add_model_options(gen)

    run = commands.add_parser(
        "run",
        help="make every video of a Parquet manifest (the batch flow)",
        description="Run the batch flow: read MANIFEST_URL in batches, make one video per row as a chain of "
        "cached Prefect tasks, publish each video under OUTPUT_URL/{video_id}/ as soon as it is done, and "
        "write OUTPUT_URL/results.parquet. A rerun skips complete videos by lookup and resumes the rest from "
        "the cache. Exit 0 when every row succeeded, 3 when some rows failed, 1 when the run could not "
        "proceed. With no Prefect server configured, Prefect's embedded one is used.",
    )
    run.add_argument("manifest", metavar="MANIFEST_URL", help="Parquet manifest: a path or fsspec URL")
    run.add_argument("--output", required=True, metavar="OUTPUT_URL", help="where videos and results go")
    run.add_argument(
        "--cache", metavar="CACHE_URL", help="artifact and result cache (default OUTPUT_URL/.cache)"
    )
    run.add_argument(
        "--runner",
        choices=["local", "dask"],
        default="local",
        help="local: threads in this process; dask: a Dask cluster (needs a real Prefect server, see README)",
    )
    run.add_argument(
        "--dask-address",
        metavar="tcp://HOST:PORT",
        help="join this Dask scheduler (workers started with `--resources GPU=1`); default: a local cluster",
    )
    run.add_argument(
        "--dask-workers",
        type=_positive("--dask-workers"),
        help="workers of the local Dask cluster (default: one per GPU, or 2 on a CPU machine)",
    )
    run.add_argument("--limit", type=_positive("--limit", 0), help="run only the first N rows")
    run.add_argument(
        "--force", action="store_true", help="recompute everything, ignoring complete videos and cache"
    )
    run.add_argument(
        "--storage-options",
        metavar="JSON",
        help='fsspec options for the URLs, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'; kept out of '
        "flow parameters, logs and results",
    )
    _add_flow_options(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_model_options(run)

    serve = commands.add_parser(
        "serve",
        help="run the batch flow on a schedule (a long-running process; needs a Prefect server)",
        description="Register a scheduled deployment of the batch flow on the Prefect server at "
        "$PREFECT_API_URL and serve it from this process until interrupted: each scheduled (or manually "
        "triggered) run makes every missing video of MANIFEST_URL.",
    )
    serve.add_argument("manifest", metavar="MANIFEST_URL")
    serve.add_argument("--output", required=True, metavar="OUTPUT_URL")
    serve.add_argument("--cache", metavar="CACHE_URL", help="default OUTPUT_URL/.cache")
    serve.add_argument("--cron", default="0 2 * * *", help='schedule, cron syntax (default "0 2 * * *")')
    serve.add_argument("--name", default="stillmotion-nightly", help="deployment name (stillmotion-nightly)")
    serve.add_argument("--storage-options", metavar="JSON", help="fsspec options for the URLs (JSON)")
    _add_flow_options(serve)
    _add_model_options(serve)

    validate = commands.add_parser(
        "validate",
        help="check every row of a manifest, decoding every image",
        description="Check every row of a manifest, opening and fully decoding every image. Prints one line "
        "per bad row (row index, video_id, column, reason); exit 0 when all rows are valid, 1 otherwise.",
    )
    validate.add_argument("manifest", metavar="MANIFEST_URL")
    validate.add_argument("--storage-options", metavar="JSON", help="fsspec options for the URLs (JSON)")

    toy = commands.add_parser(
        "train-toy",
        help="train the toy-world model (quality benchmarks) from scratch on the CPU",
        description="Draw the procedural toy world (one coloured shape on black, with captions) and train a "
        "tiny latent diffusion model on it in the Stable Diffusion layout: VAE first, then UNet and text "
        "encoder jointly, for fixed step budgets (same command, seed, CPU and threads: same weights). "
        "Weights are written as fp16 safetensors. About 100 minutes on a 2-core machine with the defaults "
        "(measured: VAE 22 min, UNet 75 min).",
    )
    toy.add_argument("dir", metavar="DIR")
    toy.add_argument("--vae-steps", type=_positive("--vae-steps"), default=1000, help="VAE steps (1000)")
    toy.add_argument(
        "--unet-steps", type=_positive("--unet-steps"), default=3000, help="UNet + text encoder steps (3000)"
    )
    toy.add_argument(
        "--max-minutes", type=_positive_float, help="optional time cap per stage (stops early, logged)"
    )
    toy.add_argument("--images", type=_positive("--images"), default=50_000, help="training images (50000)")
    toy.add_argument("--seed", type=_positive("--seed", 0), default=0)

    tiny = commands.add_parser(
        "make-tiny-model",
        help="write a tiny random SD + BLIP model for offline runs and tests",
        description="Write a tiny randomly initialised SD pipeline and BLIP captioner in the standard "
        "Hugging Face layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/, "
        "captioner/). "
        "It makes 64x64 videos of noise-like content: it proves the pipeline runs, not that it looks good.",
    )
    tiny.add_argument("dir", metavar="DIR")
    tiny.add_argument("--seed", type=_positive("--seed", 0), default=0)
    return parser


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
    from .models import MethodParams, load_stable_diffusion
    from .single import VideoRequest, generate_video
    from .storage import OutputStore

    try:
        params = MethodParams(
            keyframes=args.keyframes,
            frames=args.frames,
            fps=args.fps,
            seed=args.seed,
            steps=args.steps,
            curve=args.curve,
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
    if args.image is not None:  # fail on a bad input before loading any model
        from .models import fit_image, open_image
        from .single import read_bytes

        fit_image(open_image(read_bytes(args.image)), 8)
    sd = load_stable_diffusion(
        args.model,
        device=args.device,
        dtype=args.dtype,
        channels_last=args.channels_last,
        compile_unet=args.compile_unet,
    )
    progress = StageProgress()
    try:
        files, metadata = generate_video(sd, request, progress)
    finally:
        progress.close()
    out = Path(args.out).resolve()
    OutputStore(str(out), {}).write_folder("", files, metadata)
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
    from .storage import STORAGE_OPTIONS_ENV, configure_storage, protocol_of

    options = _storage_options(options_json)
    if not options:
        return
    protocols = {protocol_of(url) for url in urls if url} - {"file"}
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


def cmd_run(args: argparse.Namespace) -> int:
    _configure_storage(args.storage_options, args.manifest, args.output, args.cache)
    # row failures are reported in results.parquet and .logs/, not as tracebacks on the terminal;
    # set before a local Dask cluster starts, so its worker processes inherit it
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the embedded server's first start on a fresh PREFECT_HOME (migrations) took 40 s on a busy
    # 2-core machine, past Prefect's default wait
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    with contextlib.ExitStack() as stack:
        return _run(args, _task_runner(args, stack))


def _run(args: argparse.Namespace, runner) -> int:
    from .flows import batch_flow

    flow = batch_flow if runner is None else batch_flow.with_options(task_runner=runner)
    summary = flow(
        manifest=args.manifest,
        output=args.output,
        cache=args.cache,
        model=args.model,
        limit=args.limit,
        force=args.force,
        device=args.device,
        dtype=args.dtype,
        in_flight=args.in_flight,
        show_progress=not args.no_progress,
        channels_last=args.channels_last,
        compile_unet=args.compile_unet,
        chunk_rows=args.chunk_rows,
    )
    print(
        f"{summary['rows']} rows: {summary['done']} made, {summary['cached']} already complete, "
        f"{summary['failed']} failed in {summary['seconds']} s; "
        f"results: {args.output.rstrip('/')}/results.parquet"
    )
    if summary["failed"]:
        print(f"failed rows: see results.parquet and {args.output.rstrip('/')}/.logs/", file=sys.stderr)
        return EXIT_ROWS_FAILED
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    _configure_storage(args.storage_options, args.manifest, args.output, args.cache)
    _require_server("serve")
    from prefect.types.entrypoint import EntrypointType

    from .flows import batch_flow

    parameters = {
        "manifest": args.manifest,
        "output": args.output,
        "cache": args.cache,
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "channels_last": args.channels_last,
        "compile_unet": args.compile_unet,
        "in_flight": args.in_flight,
        "chunk_rows": args.chunk_rows,
    }
    batch_flow.serve(
        name=args.name, cron=args.cron, parameters=parameters, entrypoint_type=EntrypointType.MODULE_PATH
    )
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from .manifests import print_validation

    _configure_storage(args.storage_options, args.manifest)
    return print_validation(args.manifest)


def cmd_train_toy(args: argparse.Namespace) -> int:
    import torch

    from .toyworld.train import train_toy_model

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
    )
    return EXIT_OK


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from .models.tiny import make_tiny_model

    path = make_tiny_model(args.dir, seed=args.seed)
    print(f"wrote a tiny random model to {path} (use it with --model {path})")
    return EXIT_OK


COMMANDS = {
    "generate": cmd_generate,
    "run": cmd_run,
    "serve": cmd_serve,
    "validate": cmd_validate,
    "make-tiny-model": cmd_make_tiny_model,
    "train-toy": cmd_train_toy,
}


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user can fix this": one line, no traceback."""
    from .flows.batch import RunError
    from .manifests import ManifestError
    from .models import ImageError, ModelNotAvailable
    from .video import EncodeError

    return (
        ImageError,
        ModelNotAvailable,
        EncodeError,
        ManifestError,
        RunError,
        FileNotFoundError,
        PermissionError,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(f"stillmotion {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("stillmotion: interrupted", file=sys.stderr)
        return 130
    except user_errors() as error:
        print(f"stillmotion {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
