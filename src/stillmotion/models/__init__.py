"""The method in pure PyTorch + diffusers/transformers: usable from a notebook with nothing else.

Never imports Prefect, fsspec or pandas.
"""

from .captioning import caption_image
from .images import Fit, ImageError, fit_image, open_image
from .insertion import decode_latents, spline_frames
from .inversion import invert
from .keyframes import edit_weights, guided_keyframes, keyframe_embeddings
from .loading import (
    Captioner,
    DeviceNotAvailable,
    ModelNotAvailable,
    StableDiffusion,
    load_captioner,
    load_stable_diffusion,
    resolve_device,
    resolve_dtype,
)
from .method import (
    Rendered,
    decode_keyframes,
    invert_source,
    render_frames,
    render_keyframes,
    synthetic_noise,
)
from .params import MethodParams, ModelDefaults

__all__ = [
    "Captioner",
    "DeviceNotAvailable",
    "Fit",
    "ImageError",
    "MethodParams",
    "ModelDefaults",
    "ModelNotAvailable",
    "Rendered",
    "StableDiffusion",
    "caption_image",
    "decode_keyframes",
    "decode_latents",
    "edit_weights",
    "fit_image",
    "guided_keyframes",
    "invert",
    "invert_source",
    "keyframe_embeddings",
    "load_captioner",
    "load_stable_diffusion",
    "open_image",
    "render_frames",
    "render_keyframes",
    "resolve_device",
    "resolve_dtype",
    "spline_frames",
    "synthetic_noise",
]
