"""Thin Prefect tasks over models/, one per stage of a video, cached by content keys."""

from .finish import finish_stage
from .publish import publish_stage
from .runtime import COMPUTED, Job
from .stages import (
    caption_stage,
    encode_stage,
    frames_stage,
    invert_stage,
    keyframes_stage,
    scores_stage,
    source_stage,
)

__all__ = [
    "COMPUTED",
    "Job",
    "caption_stage",
    "encode_stage",
    "finish_stage",
    "frames_stage",
    "invert_stage",
    "keyframes_stage",
    "publish_stage",
    "scores_stage",
    "source_stage",
]
