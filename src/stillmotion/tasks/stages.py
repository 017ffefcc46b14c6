"""Thin Prefect tasks over models/: load inputs from the artifact store, compute, store, return keys.

Every cached stage's key is a hash of its true inputs (image bytes via their sha256, prompts, the
resolved parameters the stage reads (MethodParams.stage_fields), model id and revision, algorithm
version) and names its artifact. The artifact store is the only cache: each stage looks its own
artifact up; Prefect persists no result and keeps no cache. Results are small JSON dicts, never tensors.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import time
import traceback

import numpy as np
import PIL.Image
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from ..models import (
    ImageError,
    ModelNotAvailable,
    caption_image,
    decode_keyframes,
    fit_image,
    invert_source,
    open_image,
    render_frames,
)
from ..models.candidates import SELECTION_VERSION, render_candidates
from ..models.loading import captioner_identity
from ..models.method import Rendered, start_on_input
from ..models.scoring import frame_prompts, video_scores
from ..outputs import mp4_bytes, png_bytes, sha256
from ..requests import VideoRequest, read_bytes
from ..storage import (
    FAILURES,
    ArtifactStore,
    OutputStore,
    StorageError,
    artifact_key,
    configure_storage,
    is_transient,
)
from ..video import EncodeError
from .runtime import (
    COMPUTED,
    Job,
    captioner,
    compute_identity,
    device_lock,
    scorers,
    stable_diffusion,
    stage_progress,
    worker_label,
)


@functools.lru_cache(maxsize=16)
def artifacts(cache_url: str) -> ArtifactStore:
    return ArtifactStore(f"{cache_url}/artifacts")


@functools.lru_cache(maxsize=16)
def _captioner_identity(model_path: str) -> dict:
    model_id, _, revision = captioner_identity(model_path)
    return {"captioner": model_id, "captioner_revision": revision}


def one_line(error: BaseException) -> str:
    """A failure's reason in one line: the message of errors a user can fix, else type and message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, ImageError | ModelNotAvailable | EncodeError | StorageError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def body(stage):
    """A stage's function itself, without its Prefect task and its failure log: what `generate` runs,
    and what one task runs for several stages (tasks/finish.py)."""
    return stage.fn.__wrapped__


def given_caption(request: VideoRequest) -> dict | None:
    """The caption stage's result for a row that needs no captioner (synthetic: its source prompt; a
    caption in the row); None: BLIP captions it (caption_stage)."""
    if request.synthetic:
        return {"caption": request.source_prompt, "caption_source": "source_prompt"}
    if request.caption:
        return {"caption": request.caption, "caption_source": "user"}
    return None


def row_chain(job: Job, run) -> tuple:
    """One row's stages up to its frames, in order, each as `run(name, *inputs)` (the batch flow submits
    the Prefect task, `generate` calls its body): (source, caption, inverted, keyframes, frames), where
    source and inverted are None in synthetic mode and caption is a dict when no captioner is needed."""
    source = inverted = None
    caption = given_caption(job.request)
    if not job.request.synthetic:
        source = run("source")
        if caption is None:
            caption = run("caption", source)
        inverted = run("invert", source, caption)
    keyframes = run("keyframes", inverted, caption)
    return source, caption, inverted, keyframes, run("frames", keyframes, source)


def load_source(data: bytes, size: int, name: str | None = None) -> tuple[PIL.Image.Image, dict]:
    """Decode and fit image bytes (`name`, their path, for errors); the fit is returned as a dict."""
    image, fit = fit_image(open_image(data, name), size)
    return image, fit.to_dict()


def logs_failures(stage):
    """On failure, write the one-line reason and full traceback to OUTPUT/.logs/{video_id}.txt.

    Also applies the environment's storage options, which a Dask worker process has not done yet.
    """

    @functools.wraps(stage)
    def wrapper(job: Job, *args, **kwargs):
        configure_storage()
        try:
            return stage(job, *args, **kwargs)
        except Exception as error:
            text = f"{one_line(error)}\n\nstage: {stage.__name__}\n{traceback.format_exc()}"
            outputs = OutputStore(job.output_url)
            outputs.write_log(job.video_id, text)
            record_failure(outputs, job, error)
            raise

    return wrapper


def fails_on_input(error: BaseException) -> bool:
    """A failure that the same input always meets (an undecodable or missing image, no captioner), so a
    rerun with the same row fingerprint reports it again instead of retrying; never a storage error,
    an out-of-memory error or an interruption."""
    return isinstance(error, ImageError | ModelNotAvailable) and not is_transient(error)


def record_failure(outputs: OutputStore, job: Job, error: BaseException) -> None:
    """OUTPUT/.logs/{video_id}.json: the row's fingerprint and reason, for a failure on its own input;
    any earlier such record goes otherwise (a transient failure is retried by the next run)."""
    name = FAILURES.format(video_id=job.video_id)
    if job.fingerprint and fails_on_input(error):
        outputs.write_json(name, {"fingerprint": job.fingerprint, "reason": one_line(error)})
    else:
        outputs.forget_failure(job.video_id)


def timing(job: Job, started: float, compute_start: float, on_device: bool = True) -> dict:
    """A stage's record: compute seconds (from `compute_start`, a perf_counter taken once the device
    is held, so lock waits do not count), the task's wall-clock start (before any wait) and end, the
    worker it ran on, and for model stages the device type and dtype it computed in."""
    seconds = time.perf_counter() - compute_start
    record = {"seconds": round(seconds, 4), "started": started, "ended": time.time()}
    record["worker"] = worker_label()
    return {**record, **compute_identity(job)} if on_device else record


def model_key(job: Job) -> dict:
    """What a model stage's numbers depend on besides its inputs: the weights, device type and dtype."""
    return {**job.model_key, **compute_identity(job)}


# A stage that failed on a transient storage error (storage.is_transient: a dropped connection, a
# timeout, a 503) runs again after these waits (seconds, +-50% jitter); any other failure fails the row
STORAGE_RETRY_DELAYS = [2, 10, 30]


def retry_transient(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry only transient storage errors, never a user's bad input."""
    error = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)


def retry_options() -> dict:
    return {
        "retries": len(STORAGE_RETRY_DELAYS),
        "retry_delay_seconds": STORAGE_RETRY_DELAYS,
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_transient,
    }


def _stage_options(name: str) -> dict:
    """No Prefect result records and no Prefect cache: each stage looks its own artifact up (the artifact
    store is the only cache), so nothing read from storage is ever decoded by Prefect (its JSON decoder
    imports the classes a record names)."""
    return {
        "name": name,
        "task_run_name": f"{name}-{{job.video_id}}",
        "persist_result": False,
        "cache_policy": NO_CACHE,
        **retry_options(),
    }


# 1. source: read the image bytes, fit them; keyed by content, so it always runs (a read + hash)
@task(**_stage_options("source"))
@logs_failures
def source_stage(job: Job) -> dict:
    """Read and hash the image; store the fitted source PNG and its fit."""
    data = read_bytes(job.request.image)
    digest = sha256(data)
    key = artifact_key("source", image_sha256=digest, size=job.size)
    store = artifacts(job.cache_url)
    if job.force or not store.intact(key, "png"):
        image, fit = load_source(data, job.size, job.request.image)
        store.put_file(key, "png", png_bytes(image), record={"fit": fit})
        COMPUTED["source"] += 1
    return {"key": key, "image_sha256": digest}


def _source_image(job: Job, source: dict) -> PIL.Image.Image:
    return PIL.Image.open(io.BytesIO(artifacts(job.cache_url).get_file(source["key"], "png"))).convert("RGB")


# 2. caption
def caption_key(job: Job, source: dict) -> str:
    return artifact_key(
        "caption",
        image_sha256=source["image_sha256"],
        size=job.size,
        device=compute_identity(job)["device"],  # BLIP runs in fp32 on the job's device
        **_captioner_identity(job.model_path),
    )


@task(**_stage_options("caption"))
@logs_failures
def caption_stage(job: Job, source: dict) -> dict:
    """BLIP caption of the fitted source image."""
    key, store = caption_key(job, source), artifacts(job.cache_url)
    if job.force or not store.intact(key, "json"):
        started = time.time()
        with device_lock(job.device):
            compute_start = time.perf_counter()
            blip = captioner(job)
            text = caption_image(blip.model, blip.processor, _source_image(job, source))
        record = {"caption": text, **timing(job, started, compute_start)}
        store.put_json(key, {**record, **_captioner_identity(job.model_path)})
        COMPUTED["caption"] += 1
    return {"key": key, "caption_source": "blip", **store.get_json(key)}


# 3. inversion
def invert_key(job: Job, source: dict, caption: dict) -> str:
    return artifact_key(
        "invert",
        image_sha256=source["image_sha256"],
        caption=caption["caption"],
        params=job.request.params.stage_fields("invert"),
        **model_key(job),
    )


@task(**_stage_options("invert"))
@logs_failures
def invert_stage(job: Job, source: dict, caption: dict) -> dict:
    """Regularized DDIM inversion of the source: the inverted noise x_T."""
    key, store = invert_key(job, source, caption), artifacts(job.cache_url)
    if job.force or not store.intact(key, "safetensors"):
        started = time.time()
        with device_lock(job.device):
            compute_start = time.perf_counter()
            sd = stable_diffusion(job)
            image = _source_image(job, source)
            inverted = invert_source(
                sd, image, caption["caption"], job.request.params, callback=stage_progress("invert")
            )
        store.put_tensors(key, {"inverted_noise": inverted}, record=timing(job, started, compute_start))
        COMPUTED["invert"] += 1
    return {"key": key, **store.get_json(key)}


def fitted_batches(job: Job, compute):
    """`compute(params)` at the row's batch size (capped by the run's), halved on each CUDA out-of-memory
    error down to 1 before the stage fails; returns (result, batch size used). The batch size never
    changes the numbers, so it is recorded, not keyed."""
    params = job.request.params
    if job.batch_size is not None and job.batch_size < params.batch_size:
        params = dataclasses.replace(params, batch_size=job.batch_size)
    while True:
        try:
            return compute(params), params.batch_size
        except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not _out_of_memory(error) or params.batch_size == 1:
                raise
        # out of the except block, so the failed attempt's tensors (held by its traceback) can be freed
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        params = dataclasses.replace(params, batch_size=params.batch_size // 2)


def _out_of_memory(error: BaseException | None) -> bool:
    """A CUDA out-of-memory error, also when torch.compile wrapped it (BackendCompilerFailed)."""
    while error is not None:
        if isinstance(error, torch.OutOfMemoryError):
            return True
        error = error.__cause__
    return False


# 4. key frames (and the source frame), one guided loop
def keyframes_key(job: Job, inverted: dict | None, caption: dict) -> str:
    request = job.request
    return artifact_key(
        "keyframes",
        inverted=inverted["key"] if inverted else None,
        caption=caption["caption"],
        synthetic=request.synthetic,
        prompts=list(request.prompts),
        selection=SELECTION_VERSION,  # how the best of N candidates is chosen
        params=request.params.stage_fields("keyframes"),
        **model_key(job),
    )


@task(**_stage_options("keyframes"))
@logs_failures
def keyframes_stage(job: Job, inverted: dict | None, caption: dict) -> dict:
    """The reference pass and every key frame under cross-attention guidance (the best of the row's
    candidates, each candidate's judgement in the record)."""
    key, store = keyframes_key(job, inverted, caption), artifacts(job.cache_url)
    if job.force or not store.intact(key, "safetensors"):
        request = job.request
        started = time.time()
        with device_lock(job.device):
            compute_start = time.perf_counter()
            sd = stable_diffusion(job)
            noise = store.get_tensors(inverted["key"])["inverted_noise"] if inverted else None
            (rendered, candidates), batch = fitted_batches(
                job,
                lambda params: render_candidates(
                    sd,
                    noise,
                    caption["caption"],
                    list(request.prompts),
                    params,
                    request.synthetic,
                    callback=stage_progress("keyframes"),
                ),
            )
        record = {**timing(job, started, compute_start), "batch_size": batch}
        record["truncated_prompts"] = rendered.truncated_prompts
        if candidates:
            record["candidates"] = candidates
        store.put_tensors(
            key,
            {"source_latent": rendered.source_latent, "keyframe_latents": rendered.keyframe_latents},
            record=record,
        )
        COMPUTED["keyframes"] += 1
    return {"key": key, **store.get_json(key)}


# 5. frames: spline insertion and VAE decode
def frames_key(job: Job, keyframes: dict, source: dict | None = None) -> str:
    return artifact_key(
        "frames",
        keyframes=keyframes["key"],
        start=source["key"] if source else None,  # real mode: the video starts on the fitted input
        params=job.request.params.stage_fields("frames"),
        **model_key(job),
    )


def _uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@task(**_stage_options("frames"))
@logs_failures
def frames_stage(job: Job, keyframes: dict, source: dict | None = None) -> dict:
    """The frames between the anchors (the row's insertion), decoded, with the decoded key frames
    (uint8 NHWC). Real mode's video starts on the fitted input itself (method.start_on_input), not on
    its reconstruction."""
    key, store = frames_key(job, keyframes, source), artifacts(job.cache_url)
    if job.force or not store.intact(key, "safetensors"):
        started = time.time()
        latents = store.get_tensors(keyframes["key"])
        image = _source_image(job, source) if source else None
        with device_lock(job.device):
            compute_start = time.perf_counter()
            sd = stable_diffusion(job)
            rendered = Rendered(
                latents["source_latent"].to(sd.device), latents["keyframe_latents"].to(sd.device)
            )
            if image is not None:
                rendered = start_on_input(sd, rendered, image)
            (frames, keyframe_images), batch = fitted_batches(
                job,
                lambda params: (
                    _uint8(render_frames(sd, rendered, params)),
                    _uint8(decode_keyframes(sd, rendered, params)),
                ),
            )
        record = {**timing(job, started, compute_start), "batch_size": batch}
        store.put_tensors(key, {"frames": frames, "keyframes": keyframe_images}, record=record)
        COMPUTED["frames"] += 1
    return {"key": key, **store.get_json(key)}


def frame_images(job: Job, frames: dict) -> tuple[list[PIL.Image.Image], list[PIL.Image.Image]]:
    tensors = artifacts(job.cache_url).get_tensors(frames["key"])
    return [
        [PIL.Image.fromarray(np.asarray(frame)) for frame in tensors[name]]
        for name in ("frames", "keyframes")
    ]


# 6. encode
def encode_key(job: Job, frames: dict) -> str:
    return artifact_key(
        "encode", frames=frames["key"], crf=18, params=job.request.params.stage_fields("encode")
    )


@task(**_stage_options("encode"))
@logs_failures
def encode_stage(job: Job, frames: dict) -> dict:
    """H.264 MP4 of the frames."""
    key, store = encode_key(job, frames), artifacts(job.cache_url)
    if job.force or not store.intact(key, "mp4"):
        started, compute_start = time.time(), time.perf_counter()
        video = mp4_bytes(frame_images(job, frames)[0], fps=job.request.params.fps)
        store.put_file(key, "mp4", video, record=timing(job, started, compute_start, on_device=False))
        COMPUTED["encode"] += 1
    return {"key": key, **store.get_json(key)}


# 7. scores: what a data team filters on, from the frames (and scoring models where there are some)
SCORES_VERSION = 1  # bumped when a score's definition changes


def scores_key(job: Job, frames: dict, source: dict | None) -> str:
    p, found = job.request.params, job.scorers or {}
    return artifact_key(
        "scores",
        frames=frames["key"],
        source=source["key"] if source else None,
        prompts=list(job.request.prompts),
        version=SCORES_VERSION,
        params=p.stage_fields("scores"),
        scorers={name: revision for name, (_, _, revision) in sorted(found.items())},
        device=compute_identity(job)["device"] if found else None,
    )


@task(**_stage_options("scores"))
@logs_failures
def scores_stage(job: Job, frames: dict, source: dict | None) -> dict:
    """Scores of the frames against the source (real mode: the fitted image; synthetic: the reference
    frame): metrics.basic_scores always, models.scoring's with the run's scoring models."""
    key, store = scores_key(job, frames, source), artifacts(job.cache_url)
    if job.force or not store.intact(key, "json"):
        started, compute_start = time.time(), time.perf_counter()
        video = store.get_tensors(frames["key"])["frames"].numpy()  # (1 + S * N, H, W, 3) uint8
        reference = np.asarray(_source_image(job, source)) if source else video[0]
        prompts = frame_prompts(list(job.request.prompts), job.request.params.frames_per_segment)
        record, on_device = {}, False
        if job.scorers:
            try:
                with device_lock(job.device):
                    compute_start = time.perf_counter()
                    record["scores"] = video_scores(video, reference, prompts, scorers(job))
                    on_device = True
            except ModelNotAvailable as error:  # the basic scores stay; the row never fails for it
                record["note"] = one_line(error)
        if "scores" not in record:
            record["scores"] = video_scores(video, reference, prompts)
        store.put_json(key, {**record, **timing(job, started, compute_start, on_device=on_device)})
        COMPUTED["scores"] += 1
    return {"key": key, **store.get_json(key)}
