"""A row's last task: encode, scores and publish in one task run (the task is named `publish`).

Each Prefect task run costs the server ~5 KB of database (its run and three states) and, with event
persistence on, ~17 KB more of events; a row's encode and scores never need resuming apart from its
publishing, so they run inside it. They keep their own artifacts, keyed and checked as before
(`intact`: present and whole), so a rerun after a crash in the middle computes neither again.
"""

from __future__ import annotations

from prefect import task

from .publish import publish_stage
from .runtime import Job
from .stages import body, encode_stage, logs_failures, retry_options, scores_stage


@task(name="publish", task_run_name="publish-{job.video_id}", persist_result=False, **retry_options())
@logs_failures
def finish_stage(
    job: Job,
    source: dict | None,
    caption: dict,
    inverted: dict | None,
    keyframes: dict,
    frames: dict,
) -> dict:
    """Encode the frames and score them (each from its artifact when that exists and is whole), then
    publish the video: what encode_stage, scores_stage and publish_stage do, as one task run."""
    encoded = body(encode_stage)(job, frames)
    scores = body(scores_stage)(job, frames, source)
    return body(publish_stage)(job, source, caption, inverted, keyframes, frames, encoded, scores)
