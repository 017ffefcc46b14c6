"""The last task of a row: assemble the video's files and metadata and publish them atomically."""

from __future__ import annotations

import functools
import sys
import threading

from prefect import task

from ..models.method import edit_notes
from ..outputs import add_candidates, image_files, video_metadata
from ..storage import OutputStore
from .runtime import Job
from .stages import artifacts, frame_images, logs_failures, retry_options


@task(name="publish", task_run_name="publish-{job.video_id}", persist_result=False, **retry_options())
@logs_failures
def publish_stage(
    job: Job,
    source: dict | None,
    caption: dict,
    inverted: dict | None,
    keyframes: dict,
    frames: dict,
    encoded: dict,
    scores: dict | None = None,
) -> dict:
    """Write video.mp4, source.png, keyframes/, preview.png, then metadata.json, into OUTPUT/{video_id}/."""
    files, metadata = assemble(job, source, caption, inverted, keyframes, frames, encoded, scores)
    outputs = OutputStore(job.output_url)
    outputs.publish(job.video_id, files, metadata)
    outputs.clear_log(job.video_id)
    return {
        "video": outputs.url_of(f"{job.video_id}/video.mp4"),
        "metadata": outputs.url_of(f"{job.video_id}/metadata.json"),
        "scores": scores["scores"] if scores else None,
        "timings": metadata["timings"],
    }


def assemble(
    job: Job,
    source: dict | None,
    caption: dict,
    inverted: dict | None,
    keyframes: dict,
    frames: dict,
    encoded: dict,
    scores: dict | None = None,
) -> tuple[dict[str, bytes], dict]:
    """A video's files and metadata.json from its stages' results, as `generate` writes them and the
    batch flow publishes them."""
    store = artifacts(job.cache_url)
    frame_list, keyframe_list = frame_images(job, frames)
    files = {"video.mp4": store.get_file(encoded["key"], "mp4"), **image_files(frame_list[0], keyframe_list)}
    stages = {
        "caption": caption,
        "invert": inverted,
        "keyframes": keyframes,
        "frames": frames,
        "encode": encoded,
        "scores": scores,
    }
    request = job.request
    inputs = {"image": request.image, "source_prompt": request.source_prompt}
    if source:
        inputs["image_sha256"] = source["image_sha256"]
    metadata = video_metadata(
        request,
        inputs=inputs,
        caption=caption["caption"],
        caption_source=caption["caption_source"],
        captioner={"id": caption["captioner"], "revision": caption["captioner_revision"]}
        if "captioner" in caption
        else None,
        model={"id": job.model, "revision": job.revision},
        device=keyframes["device"],  # what the key frames were computed with, not this task's job
        dtype=keyframes["dtype"],
        size=job.size,
        frame_count=len(frame_list),
        keyframe_count=len(keyframe_list),
        fit=store.get_json(source["key"])["fit"] if source else None,
        timings={name: stage["seconds"] for name, stage in stages.items() if stage and "seconds" in stage},
        truncated_prompts=keyframes.get("truncated_prompts", []),
        param_sources=job.param_sources,
    )
    if keyframes.get("candidates"):
        add_candidates(metadata, keyframes["candidates"])
    if scores:
        metadata["scores"] = scores["scores"]
        if scores.get("note"):
            metadata["notes"].append(f"scores: {scores['note']}")
    metadata["notes"] += _edit_notes(job, caption["caption"])
    metadata["artifacts"] = {name: stage["key"] for name, stage in stages.items() if stage and "key" in stage}
    metadata["computed_with"] = {
        name: {field: stage[field] for field in ("device", "dtype", "batch_size", "worker") if field in stage}
        for name, stage in stages.items()
        if stage and "worker" in stage
    }
    metadata["fingerprint"] = job.fingerprint  # what made it: a rerun remakes it when the row changes
    return files, metadata


_SAID: set[str] = set()  # the notes already said on this process's stderr (each once, whatever the rows)
_SAID_LOCK = threading.Lock()


def _edit_notes(job: Job, caption: str) -> list[str]:
    """The row's prompts whose edit can do nothing visible (models.method.edit_notes), also said on stderr
    once per process; none when the tokenizer cannot be loaded (a note never fails a row)."""
    try:
        tokenizer = _tokenizer(job.model_source, job.revision if job.hub_model else None)
    except Exception:  # noqa: BLE001 - a note is not worth failing a published video for
        return []
    notes = edit_notes(tokenizer, caption, list(job.request.prompts))
    with _SAID_LOCK:
        fresh = [note for note in notes if note not in _SAID]
        _SAID.update(fresh)
    for note in fresh:
        from tqdm.auto import tqdm  # above the progress bar, not through it

        tqdm.write(f"stillmotion: {job.video_id}: {note}", file=sys.stderr)
    return notes


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str, revision: str | None):
    """The model's tokenizer alone (no weights), once per process."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision)
