"""The method in pure PyTorch + diffusers/transformers: usable from a notebook with nothing else.

Never imports Prefect, fsspec or pandas.
"""

import importlib

# each name from the submodule that defines it, imported on first use (PEP 562): the manifest code
# reads MethodParams without importing torch or diffusers
_WHERE = {
    "caption_image": "captioning",
    "Fit": "images",
    "ImageError": "images",
    "fit_image": "images",
    "open_image": "images",
    "decode_latents": "insertion",
    "spline_frames": "insertion",
    "invert": "inversion",
    "edit_weights": "keyframes",
    "guided_keyframes": "keyframes",
    "keyframe_embeddings": "keyframes",
    "Captioner": "loading",
    "DeviceNotAvailable": "errors",
    "ModelNotAvailable": "errors",
    "StableDiffusion": "loading",
    "load_captioner": "loading",
    "load_stable_diffusion": "loading",
    "resolve_device": "loading",
    "resolve_dtype": "loading",
    "Rendered": "method",
    "decode_keyframes": "method",
    "invert_source": "method",
    "render_frames": "method",
    "render_keyframes": "method",
    "synthetic_noise": "method",
    "MethodParams": "params",
    "ModelDefaults": "params",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


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
