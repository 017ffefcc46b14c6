"""The last task of a row: assemble the video's files and metadata and publish them atomically."""

from __future__ import annotations

from prefect import task

from ..outputs import add_candidates, image_files, video_metadata
from ..storage import OutputStore
from .runtime import Job
from .stages import artifacts, forget_failure, frame_images, logs_failures, retry_options


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
    store, outputs = artifacts(job.cache_url), OutputStore(job.output_url)
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
    metadata["artifacts"] = {name: stage["key"] for name, stage in stages.items() if stage and "key" in stage}
    metadata["computed_with"] = {
        name: {field: stage[field] for field in ("device", "dtype", "batch_size", "worker") if field in stage}
        for name, stage in stages.items()
        if stage and "worker" in stage
    }
    metadata["fingerprint"] = job.fingerprint  # what made it: a rerun remakes it when the row changes
    outputs.publish(job.video_id, files, metadata)
    outputs.clear_log(job.video_id)
    forget_failure(outputs, job.video_id)
    return {
        "video": outputs.url_of(f"{job.video_id}/video.mp4"),
        "metadata": outputs.url_of(f"{job.video_id}/metadata.json"),
        "scores": scores["scores"] if scores else None,
        "timings": metadata["timings"],
    }
