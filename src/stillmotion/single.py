"""One video from one image (or source prompt): `stillmotion generate`, no orchestration.

    with artifact_cache(None) as cache_url:   # a temporary folder; or a cache URL, kept and reused
        job = generate_job(request, inspect_model(model), out="out/cat", cache_url=cache_url)
        load_model(job)                         # a layer the UNet lacks fails here, before any work
        files, metadata = generate_video(job, progress)

The batch flow's stage functions (tasks/stages.py), called in order in this process: one video has one
code path, so `generate` and a manifest row with the same values make the same artifacts, the same
bytes and the same metadata (timings and worker aside). The artifacts live in `cache_url` (a batch
run's --cache works, and is reused), else in a temporary folder, gone afterwards.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from .flows.lookup import RowLookup
from .models import StableDiffusion
from .models.attention import injected_layers
from .models.identity import ModelInfo
from .requests import VideoRequest, read_bytes  # noqa: F401 - where callers have found them
from .tasks.publish import assemble
from .tasks.runtime import Job, Progress, reporting, run_scorers, stable_diffusion
from .tasks.stages import (
    body,
    caption_stage,
    encode_stage,
    frames_stage,
    invert_stage,
    keyframes_stage,
    row_chain,
    scores_stage,
    source_stage,
)

STAGES = {
    "source": source_stage,
    "caption": caption_stage,
    "invert": invert_stage,
    "keyframes": keyframes_stage,
    "frames": frames_stage,
}


def generate_job(
    request: VideoRequest,
    info: ModelInfo,
    out: str,
    cache_url: str,
    device: str = "auto",
    dtype: str = "auto",
    channels_last: bool = False,
    compile_unet: str | None = None,
) -> Job:
    """The Job of one `generate` request: resolved with the model's defaults, fingerprinted like a
    manifest row, named after its output folder."""
    [(request, param_sources, fingerprint)] = RowLookup(None, info).fingerprints([request])
    return Job.on_model(
        info,
        video_id=request.video_id,
        request=request,
        param_sources=param_sources,
        fingerprint=fingerprint,
        output_url=os.path.dirname(os.path.abspath(out)),
        cache_url=cache_url,
        device=device,
        dtype=dtype,
        channels_last=channels_last,
        compile_unet=compile_unet,
        scorers=run_scorers(info.path),
    )


@contextlib.contextmanager
def artifact_cache(cache_url: str | None) -> Iterator[str]:
    """`cache_url`, or a temporary folder removed afterwards."""
    if cache_url:
        yield cache_url
        return
    with tempfile.TemporaryDirectory(prefix="stillmotion-generate-") as folder:
        yield folder


def load_model(job: Job) -> StableDiffusion:
    """The job's model, loaded once per process (the stages find it there); a ValueError, before any
    work, for a request this model cannot run (an injected layer it lacks)."""
    sd = stable_diffusion(job)
    if job.request.params.injection_share:
        injected_layers(sd.unet, job.request.params.injection_layers)
    return sd


def generate_video(job: Job, progress: Progress | None = None) -> tuple[dict[str, bytes], dict]:
    """Run the whole method for one job; returns (files, metadata) ready to be written."""
    with reporting(progress):
        source, caption, inverted, keyframes, frames = row_chain(
            job, lambda name, *inputs: body(STAGES[name])(job, *inputs)
        )
        encoded = body(encode_stage)(job, frames)
        scores = body(scores_stage)(job, frames, source)
    return assemble(job, source, caption, inverted, keyframes, frames, encoded, scores)
