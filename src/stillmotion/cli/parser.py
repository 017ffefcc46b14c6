"""The command line's arguments: one subparser per command, option validators that fail with usage errors."""

from __future__ import annotations

import argparse
import re

from .. import ALGORITHM_VERSION, __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ROWS_FAILED = 0, 1, 2, 3


class UsageError(Exception):
    """A bad argument: exit status 2."""


def _add_flow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--in-flight",
        type=_positive("--in-flight"),
        default=None,
        help="rows submitted at once (default: 4 locally; under Dask twice the cluster's GPUs, re-read as "
        "workers join or leave)",
    )
    parser.add_argument(
        "--chunk-rows",
        type=_positive("--chunk-rows"),
        default=500,
        help="rows of work per subflow (500): Prefect holds a flow run's task states until it ends",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive("--batch-size"),
        default=None,
        help="at most this many key frames per UNet batch, for a small GPU (default: each row's, 8); "
        "on CUDA out-of-memory a stage retries at half the batch, down to 1. Never changes the numbers",
    )
    parser.add_argument(
        "--format",
        dest="output_format",
        choices=["files", "webdataset"],
        default="files",
        help="files (default): a folder per video; webdataset: tar shards of --shard-size rows in manifest "
        "order (NNNNN.tar with {key}.mp4/.json/.txt/.png, NNNNN.parquet, NNNNN_stats.json written last), "
        "the rows' folders kept in the cache",
    )
    parser.add_argument(
        "--shard-size",
        type=_positive("--shard-size"),
        default=1000,
        help="rows per shard with --format webdataset (1000)",
    )
    parser.add_argument(
        "--no-model-scores",
        dest="model_scores",
        action="store_false",
        help="score videos without scoring models (CLIP, DINO-ViT: from MODEL/scorers/ or the hub); the "
        "basic scores (structure, smoothness, empty frames) are always computed",
    )


def _add_gpu_slots_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpu-slots",
        choices=["auto", "on", "off"],
        default=None,
        help="one model stage per device across every run on the Prefect server, through the limits that "
        "`stillmotion gpu-slots` makes. auto: when this device's limit exists on a real server; on: "
        "always (a missing limit is an error); off: never (default: $STILLMOTION_GPU_SLOTS, else auto)",
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


def _fraction(name: str, zero: bool = False):
    """A share of the steps: (0, 1], or [0, 1] with `zero`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not (0 <= value <= 1 if zero else 0 < value <= 1):
            raise argparse.ArgumentTypeError(f"{name} must be in {'[0' if zero else '(0'}, 1], got {text}")
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


# the devices torch can be asked for (as models.loading.DEVICE_PATTERN; that module imports torch)
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _device(text: str) -> str:
    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use auto, cpu, cuda, cuda:N or mps")
    return text


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="hub id or local folder of a Stable Diffusion model in diffusers layout, safetensors only "
        "(default: $STILLMOTION_MODEL or CompVis/stable-diffusion-v1-4)",
    )
    parser.add_argument(
        "--device", type=_device, default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N or mps"
    )
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
    parser.add_argument(
        "--version", action="version", version=f"stillmotion {__version__} (algorithm {ALGORITHM_VERSION})"
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
        "--cache",
        metavar="CACHE_URL",
        help="keep the stages' artifacts (inversion, key frames, frames, ...) here and reuse them: a "
        "rerun with another prompt inverts nothing again; a batch run's cache works too (default: none "
        "kept)",
    )
    gen.add_argument(
        "--keyframes", type=_positive("--keyframes"), default=6, help="key frames per segment (6)"
    )
    gen.add_argument("--frames", type=_positive("--frames"), help="output frames per segment (4 x keyframes)")
    gen.add_argument("--fps", type=_positive("--fps"), default=8, help="frames per second, 1-120 (8)")
    gen.add_argument("--seed", type=_positive("--seed", 0), default=0, help="random seed (0)")
    gen.add_argument(
        "--steps",
        type=_positive("--steps"),
        help="DDIM steps (default: the model's stillmotion.json, else 50; the guidance step is per step)",
    )
    gen.add_argument("--curve", choices=["log", "linear"], default="log", help="edit-weight curve (log)")
    gen.add_argument(
        "--candidates",
        type=_positive("--candidates"),
        default=1,
        help="best of N: render the key frames N ways (synthetic: seeds seed..seed+N-1; real: the guidance "
        "step x 1, 2, 1/2, 4, ...), keep the one whose edit completes with the best structure (1)",
    )
    gen.add_argument(
        "--insertion",
        choices=["spline", "adaptive", "motion"],
        default="adaptive",
        help="frames between key frames: the latent spline re-timed so every step is about the same size "
        "(adaptive, the default), at even times (spline), or motion-compensated in-betweens of the key "
        "frames (motion)",
    )
    gen.add_argument(
        "--cross-frame",
        choices=["off", "replace", "extend", "maps"],
        help="key frames' self-attention attends to the source frame's keys and values instead of "
        "(replace) or as well as (extend) their own, or takes the source frame's attention maps with its "
        "own values (maps) (default: the model's, else off)",
    )
    edit = gen.add_argument_group(
        "edit options",
        "default: the model's stillmotion.json, else Stable Diffusion's (pix2pix-zero's) values",
    )
    edit.add_argument(
        "--direction",
        choices=["prompt", "sentences"],
        help="edit direction: E(prompt) - E(caption) (prompt), or pix2pix-zero's mean over sentences with "
        "the changed word (sentences; see --direction-template)",
    )
    edit.add_argument(
        "--direction-template",
        dest="direction_templates",
        action="append",
        metavar="TEXT",
        help="a sentence with one {} where the changed word goes, for --direction sentences (repeatable; "
        "default: the model's, else 12 generic photo sentences)",
    )
    edit.add_argument(
        "--xa-until",
        type=_fraction("--xa-until"),
        metavar="F",
        help="cross-attention guidance on for this fraction of the steps, (0, 1] (1: every step)",
    )
    edit.add_argument(
        "--xa-schedule",
        choices=["constant", "linear"],
        help="the guidance step over those steps: constant, or decaying linearly to 0",
    )
    edit.add_argument(
        "--inbetween",
        choices=["embedding", "latent"],
        help="key frames between a segment's ends: denoised from edited embeddings (embedding), or "
        "interpolated in latent space towards the denoised last one (latent)",
    )
    edit.add_argument(
        "--negative",
        choices=["caption", "empty", "neutral"],
        help="real mode's CFG negative for the key frames: the caption (pix2pix-zero), the empty prompt, "
        "or neutral: the caption less the words the prompts change ('a big circle' for 'a big red circle' "
        "-> 'a big blue circle'), so CFG pushes towards the new words alone",
    )
    edit.add_argument(
        "--negative-until",
        type=_fraction("--negative-until"),
        metavar="F",
        help="--negative empty or neutral for this fraction of the steps, the caption after, (0, 1]",
    )
    edit.add_argument(
        "--negative-from",
        type=float,
        metavar="F",
        help="--negative empty or neutral from this fraction of the steps on, [0, 1) (with "
        "--negative-until: on [F, until)), the caption before: the caption's pull away from the source "
        "early, CFG towards the edit late, so an edit stops at its target (0: from the start)",
    )
    edit.add_argument(
        "--edit-from",
        type=float,
        metavar="F",
        help="key frames follow the unedited source frame for this fraction of the steps, [0, 1), and "
        "branch from it after: the layout is settled first (0: from x_T, as pix2pix-zero)",
    )
    edit.add_argument(
        "--inject-features",
        type=_fraction("--inject-features", zero=True),
        metavar="F",
        help="for this fraction of the steps, [0, 1], key frames take the source frame's features at "
        "--inject-layer in place of their own (Plug-and-Play): its layout is kept, the edited text sets "
        "the appearance (0: off, as pix2pix-zero)",
    )
    edit.add_argument(
        "--inject-layer",
        dest="inject_layers",
        action="append",
        metavar="NAME",
        help="a UNet ResNet block for --inject-features, as named_modules() names it (repeatable; "
        "default: the model's, else up_blocks.1.resnets.1, Plug-and-Play's layer)",
    )
    edit.add_argument(
        "--inject-mode",
        choices=["replace", "layout"],
        help="what --inject-features takes from the source frame: its features (replace, Plug-and-Play) "
        "or their layout alone, with the key frame's own mean per channel (layout: the source's colour "
        "does not hold a colour edit back); default: the model's, else replace",
    )
    gen.add_argument(
        "--xa-guidance",
        type=_non_negative_float,
        help="cross-attention guidance step (default: the model's stillmotion.json, else pix2pix-zero's "
        "0.1 real, 0.15 synthetic)",
    )
    gen.add_argument(
        "--cfg-scale",
        type=_non_negative_float,
        default=None,
        help="classifier-free guidance scale, >= 1; 1 turns it off, as in pix2pix-zero (default: the "
        "model's stillmotion.json, else 5.0)",
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
    split = run.add_argument_group(
        "static shards (any launcher)",
        "make only one index's blocks of rows (--shard-size rows in webdataset, 32 in files; block b to "
        "index b mod N) and write its part of the results; `stillmotion merge OUTPUT_URL` joins the parts. "
        "Default: from Slurm's SLURM_ARRAY_TASK_ID/_MIN/_COUNT, or Kubernetes' JOB_COMPLETION_INDEX "
        "(with --num-shards), else the whole manifest",
    )
    split.add_argument("--num-shards", type=_positive("--num-shards"), metavar="N", help="indices in all")
    split.add_argument(
        "--shard-index", type=_positive("--shard-index", 0), metavar="K", help="this index, 0..N-1"
    )
    _add_flow_options(run)
    _add_gpu_slots_option(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_model_options(run)

    serve = commands.add_parser(
        "serve",
        help="run the batch flow on a schedule (a long-running process; needs a Prefect server)",
        description="Register a scheduled deployment of the batch flow on the Prefect server at "
        "$PREFECT_API_URL and serve it from this process until interrupted: each scheduled (or manually "
        "triggered) run makes every missing video of MANIFEST_URL.",
    )
    serve.add_argument("manifest", metavar="MANIFEST_URL", help="Parquet manifest: a path or fsspec URL")
    serve.add_argument(
        "--output",
        required=True,
        metavar="OUTPUT_URL",
        help="where videos and results go, a folder or fsspec URL (s3://bucket/videos): as `run --output`",
    )
    serve.add_argument("--cache", metavar="CACHE_URL", help="default OUTPUT_URL/.cache")
    serve.add_argument("--cron", default="0 2 * * *", help='schedule, cron syntax (default "0 2 * * *")')
    serve.add_argument("--name", default="stillmotion-nightly", help="deployment name (stillmotion-nightly)")
    serve.add_argument("--storage-options", metavar="JSON", help="fsspec options for the URLs (JSON)")
    _add_flow_options(serve)
    _add_gpu_slots_option(serve)
    _add_model_options(serve)

    slots = commands.add_parser(
        "gpu-slots",
        help="make this machine's GPU slots on the Prefect server (once per machine)",
        description="Create on the Prefect server at $PREFECT_API_URL one global concurrency limit of 1 per "
        "device of this machine (each CUDA device, and the CPU, which counts as one device), named "
        "stillmotion-gpu:HOST:DEVICE, or set an existing one back to 1 and active. Runs and deployments "
        "using that server then never run two model stages on one device at once (see --gpu-slots). "
        "Safe to run again.",
    )
    slots.add_argument(
        "--device",
        action="append",
        metavar="DEVICE",
        help="only this device (cpu, cuda:N, mps; repeatable); default: every CUDA device and the CPU",
    )

    validate = commands.add_parser(
        "validate",
        help="check every row of a manifest, decoding every image",
        description="Check every row of a manifest, opening and fully decoding every image. Prints one line "
        "per bad row (row index, video_id, column, reason), one line with its count of rows for a column of "
        "the wrong type, and a warning for a column that looks like a misspelt option column (Frames, fsp); "
        "exit 0 when all rows are valid, 1 otherwise.",
    )
    validate.add_argument("manifest", metavar="MANIFEST_URL")
    validate.add_argument("--storage-options", metavar="JSON", help="fsspec options for the URLs (JSON)")

    merge = commands.add_parser(
        "merge",
        help="join the parts of a split run (--num-shards) into results.parquet and report.html",
        description="Read the parts the indices of the newest split wrote under OUTPUT_URL/.parts/ and write "
        "OUTPUT_URL/results.parquet and report.html for the whole manifest. Names the indices that are "
        "missing or incomplete, with the command that reruns each: exit 1 then; 3 when rows failed; 0.",
    )
    merge.add_argument("output", metavar="OUTPUT_URL")
    merge.add_argument("--storage-options", metavar="JSON", help="fsspec options for the URLs (JSON)")

    toy = commands.add_parser(
        "train-toy",
        help="train the toy-world model (quality benchmarks) from scratch on the CPU",
        description="Draw the procedural toy world (one coloured shape on black, with captions) and train a "
        "tiny latent diffusion model on it in the Stable Diffusion layout: VAE first, then UNet and text "
        "encoder jointly, for fixed step budgets (same command, seed, CPU and threads: same weights). "
        "Weights are written as fp16 safetensors. 40-100 minutes on a 2-core machine with the defaults "
        "(measured: VAE 9-22 min, UNet 29-75 min, by CPU).",
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
    toy.add_argument(
        "--hues",
        choices=("full", "near", "mixed", "named"),
        default="full",
        help="training hues: 'full' (default) uniform on the whole hue circle, each image captioned with its "
        "nearest named colour, so the model has seen every hue between two colours; 'near' within 12 "
        "degrees of the four named colours (models/toyworld before 2026-12-04); 'mixed' half of each, so "
        "every hue is seen and each colour word is peaked at its own hue; 'named' half within 20 degrees of "
        "a named colour, half uniform on the circle, a caption naming the colour only within 20 degrees of "
        "it, so every hue is seen and a colour word means its own hue alone",
    )
    toy.add_argument(
        "--vae-from",
        metavar="MODEL_DIR",
        help="take this model folder's VAE as it is instead of training one (retrains the denoiser alone)",
    )
    toy.add_argument(
        "--unet-from",
        metavar="MODEL_DIR",
        help="train this model folder's UNet and text encoder on, instead of new ones; needs --vae-from, "
        "the VAE they were trained with (the same folder: a longer training in two runs)",
    )
    toy.add_argument(
        "--lr",
        type=_positive_float,
        default=5e-4,
        help="peak learning rate of the UNet + text encoder (5e-4)",
    )
    toy.add_argument(
        "--unsized",
        type=_fraction("--unsized", zero=True),
        default=0.0,
        metavar="SHARE",
        help="share of training captions without a size word ('a red square' of any size), so a caption "
        "without one is one the model knows (0: every caption names big or small)",
    )
    toy.add_argument(
        "--small",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="share of training shapes drawn small (0.5: as many small as big); more of them teaches the "
        "shapes a few latent pixels wide that the model draws worst",
    )
    toy.add_argument(
        "--shape-weight",
        type=_positive_float,
        default=0.0,
        metavar="W",
        help="weigh the latent pixels a shape touches 1 + W times the background's in the denoiser's loss "
        "(default: all alike), so the shape's outline, a few latent pixels, is not lost in the mean",
    )
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
