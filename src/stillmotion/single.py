"""One video from one image (or source prompt): the `stillmotion generate` path, no orchestration."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import PIL.Image

from .models import (
    ModelDefaults,
    StableDiffusion,
    caption_image,
    decode_keyframes,
    fit_image,
    invert_source,
    load_captioner,
    open_image,
    render_frames,
)
from .models.attention import injected_layers
from .models.candidates import render_candidates
from .models.images import tensor_to_pil
from .models.method import edit_notes
from .models.scoring import find_scorers, frame_prompts, load_scorers, video_scores
from .outputs import add_candidates, image_files, mp4_bytes, sha256, video_metadata
from .requests import VideoRequest, read_bytes, resolved  # noqa: F401 - where callers have found them

# stage name, steps done, steps in all
Progress = Callable[[str, int, int], None]


def load_source(data: bytes, size: int, name: str | None = None) -> tuple[PIL.Image.Image, dict]:
    """Decode and fit image bytes (`name`, their path, for errors); the fit is returned as a dict."""
    image, fit = fit_image(open_image(data, name), size)
    return image, fit.to_dict()


def check_for_model(sd: StableDiffusion, request: VideoRequest) -> None:
    """A ValueError, before any work, for a request this model cannot run (an injected layer it lacks)."""
    _check_layers(sd, resolved(request, _defaults(sd))[0].params)


def _defaults(sd: StableDiffusion) -> ModelDefaults:
    return ModelDefaults.of_folder(sd.path) if sd.path else ModelDefaults()


def _check_layers(sd: StableDiffusion, params) -> None:
    if params.injection_share:
        injected_layers(sd.unet, params.injection_layers)


def generate_video(
    sd: StableDiffusion, request: VideoRequest, progress: Progress | None = None
) -> tuple[dict[str, bytes], dict]:
    """Run the whole method for one request; returns (files, metadata) ready to be written."""
    timings: dict[str, float] = {}
    report = progress or (lambda stage, done, total: None)
    request, sources = resolved(request, _defaults(sd))
    params = request.params
    _check_layers(sd, params)  # before the inversion: a layer the UNet lacks fails at once

    def step(stage: str):
        return lambda done, total: report(stage, done, total)

    # 1. source, caption and x_T
    start = time.perf_counter()
    inputs: dict = {"image": request.image, "source_prompt": request.source_prompt}
    fit = None
    captioner_meta = None
    if request.synthetic:
        caption, caption_source = request.source_prompt, "source_prompt"
        inverted = None  # x_T from the seed (each best-of-N candidate's own), in render_candidates
    else:
        data = read_bytes(request.image)
        inputs["image_sha256"] = sha256(data)
        image, fit = load_source(data, sd.image_size, request.image)
        timings["load_image"] = time.perf_counter() - start
        if request.caption:
            caption, caption_source = request.caption, "user"
        else:
            start = time.perf_counter()
            captioner = load_captioner(sd.path, sd.device)
            caption, caption_source = caption_image(captioner.model, captioner.processor, image), "blip"
            captioner_meta = {"id": captioner.model_id, "revision": captioner.revision}
            timings["caption"] = time.perf_counter() - start
        start = time.perf_counter()
        inverted = invert_source(sd, image, caption, params, callback=step("invert"))
        timings["invert"] = time.perf_counter() - start

    # 2. reference pass and guided key frames, one loop
    start = time.perf_counter()
    rendered, candidates = render_candidates(
        sd, inverted, caption, list(request.prompts), params, request.synthetic, callback=step("keyframes")
    )
    timings["keyframes"] = time.perf_counter() - start

    # 3. frames on the spline, decoded; key frames decoded
    start = time.perf_counter()
    frames = tensor_to_pil(render_frames(sd, rendered, params))
    keyframes = tensor_to_pil(decode_keyframes(sd, rendered, params))
    timings["frames"] = time.perf_counter() - start

    # 4. scores (with the scoring models that go with the model, where there are some)
    start = time.perf_counter()
    video = np.stack([np.asarray(frame) for frame in frames])
    reference = video[0] if request.synthetic else np.asarray(image)
    found, missing = find_scorers(sd.path)
    scorers = load_scorers(found, sd.device) if found else None
    prompts = frame_prompts(list(request.prompts), params.frames_per_segment)
    scores = video_scores(video, reference, prompts, scorers)
    timings["scores"] = time.perf_counter() - start

    # 5. encode
    start = time.perf_counter()
    files = {"video.mp4": mp4_bytes(frames, fps=params.fps), **image_files(frames[0], keyframes)}
    timings["encode"] = time.perf_counter() - start

    metadata = video_metadata(
        request,
        inputs=inputs,
        caption=caption,
        caption_source=caption_source,
        captioner=captioner_meta,
        model={"id": sd.model_id, "revision": sd.revision},
        device=sd.device.type,  # as the batch flow records it: the type, not the index
        dtype=str(sd.dtype).removeprefix("torch."),
        size=sd.image_size,
        frame_count=len(frames),
        keyframe_count=len(keyframes),
        fit=fit,
        timings=timings,
        truncated_prompts=rendered.truncated_prompts,
        param_sources=sources,
    )
    if candidates:
        add_candidates(metadata, candidates)
    metadata["scores"] = scores
    metadata["notes"] += edit_notes(sd.tokenizer, caption, list(request.prompts))
    metadata["notes"] += [f"scores: no {name.upper()} scoring model ({why})" for name, why in missing.items()]
    return files, metadata
