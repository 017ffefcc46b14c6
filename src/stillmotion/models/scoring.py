"""Scores of a video from scoring models, as the paper and its peers report them.

    found, missing = find_scorers(sd.path)                 # {"clip": (id, path, revision), ...}
    scorers = load_scorers(found, device="cuda")
    model_scores(scorers, frames, source, frame_prompts)   # {"clip_t", "clip_f", "dino_structure"}

- CLIP-T: cosine of each frame's CLIP image embedding with its segment's prompt's text embedding;
- CLIP-F (Tem-Con): cosine of consecutive frames' CLIP image embeddings;
- DINO structure distance (Splice, pix2pix-zero): the self-similarity of the keys of DINO-ViT's last
  layer (cosine between every pair of patch tokens), frame against source, mean squared difference.

The scorers go with a model folder like its captioner: `<model>/scorers/clip` and `<model>/scorers/dino`
when they exist (`make-tiny-model` writes tiny random ones), else the hub's CLIP ViT-B/32 and DINO
ViT-S/8; safetensors only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..metrics import basic_scores
from .loading import ModelNotAvailable, resolve_model

DEFAULT_SCORERS = {"clip": "openai/clip-vit-base-patch32", "dino": "facebook/dino-vits8"}
SCORE_BATCH = 16  # frames per scorer forward pass


def find_scorers(sd_path: Path | str | None) -> tuple[dict[str, tuple[str, str, str]], dict[str, str]]:
    """The scorers that go with a model folder: ({name: (id, local folder, revision)} of those found,
    {name: why not} of the others). Loads no weights; offline, a hub id not in the cache is missing."""
    found, missing = {}, {}
    for name, default in DEFAULT_SCORERS.items():
        local = Path(sd_path) / "scorers" / name if sd_path is not None else None
        model_id = str(local) if local is not None and local.is_dir() else default
        try:
            path, revision = resolve_model(model_id)
        except ModelNotAvailable:
            missing[name] = f"{model_id} is not a local folder and not in the Hugging Face cache"
            continue
        found[name] = (model_id, str(path), revision)
    return found, missing


@dataclass
class Scorers:
    """Loaded scoring models (either may be absent) and their processors, on one device."""

    clip: torch.nn.Module | None = None
    clip_processor: object = None
    dino: torch.nn.Module | None = None
    dino_processor: object = None
    device: torch.device = torch.device("cpu")


def load_scorers(found: dict[str, tuple], device: torch.device | str = "cpu") -> Scorers:
    """Load the scorers `find_scorers` found ({name: (id, local folder, ...)}), frozen, in fp32 on
    `device`."""
    from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor, ViTModel

    scorers = Scorers(device=torch.device(device))
    try:
        if "clip" in found:
            path = found["clip"][1]
            scorers.clip = CLIPModel.from_pretrained(path, use_safetensors=True).to(device).eval()
            scorers.clip_processor = CLIPProcessor.from_pretrained(path)
        if "dino" in found:
            path = found["dino"][1]
            scorers.dino = ViTModel.from_pretrained(path, use_safetensors=True, add_pooling_layer=False)
            scorers.dino = scorers.dino.to(device).eval()
            scorers.dino_processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelNotAvailable(f"cannot load a scoring model's safetensors weights: {error}") from None
    for model in (scorers.clip, scorers.dino):
        if model is not None:
            model.requires_grad_(False)
    return scorers


def _unit(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float(), dim=-1)


def _clip_images(scorers: Scorers, images: list[PIL.Image.Image]) -> torch.Tensor:
    out = []
    for start in range(0, len(images), SCORE_BATCH):
        inputs = scorers.clip_processor(images=images[start : start + SCORE_BATCH], return_tensors="pt")
        pixels = inputs["pixel_values"].to(scorers.device)
        out.append(_unit(scorers.clip.get_image_features(pixel_values=pixels).pooler_output))
    return torch.cat(out)


def _clip_texts(scorers: Scorers, texts: list[str]) -> torch.Tensor:
    inputs = scorers.clip_processor(text=texts, padding=True, truncation=True, return_tensors="pt")
    inputs = {name: value.to(scorers.device) for name, value in inputs.items()}
    return _unit(scorers.clip.get_text_features(**inputs).pooler_output)


def _dino_self_similarity(scorers: Scorers, images: list[PIL.Image.Image]) -> torch.Tensor:
    """(B, P, P) cosine self-similarity of the last layer's keys over the patch tokens (no CLS)."""
    keys = []
    projection = [m for n, m in scorers.dino.named_modules() if n.endswith(("k_proj", "attention.key"))][-1]
    handle = projection.register_forward_hook(lambda module, args, output: keys.append(output))
    out = []
    try:
        for start in range(0, len(images), SCORE_BATCH):
            inputs = scorers.dino_processor(images=images[start : start + SCORE_BATCH], return_tensors="pt")
            keys.clear()
            scorers.dino(pixel_values=inputs["pixel_values"].to(scorers.device))
            patch_keys = _unit(keys[-1][:, 1:])  # (B, P, D): every head's key of each patch token
            out.append(patch_keys @ patch_keys.transpose(1, 2))
    finally:
        handle.remove()
    return torch.cat(out)


@torch.no_grad()
def model_scores(
    scorers: Scorers, frames: np.ndarray, source: np.ndarray, frame_prompts: list[str]
) -> dict[str, float]:
    """CLIP-T, CLIP-F and the DINO structure distance of a video: (F, H, W, 3) uint8 frames (the first
    the source frame), the (H, W, 3) source image and each frame's prompt after the first (F - 1 of
    them). A scorer that is absent leaves its scores out."""
    images = [PIL.Image.fromarray(np.asarray(frame)) for frame in frames]
    scores = {}
    if scorers.clip is not None:
        image_features = _clip_images(scorers, images)
        texts = list(dict.fromkeys(frame_prompts))
        text_features = _clip_texts(scorers, texts)
        which = torch.tensor([texts.index(prompt) for prompt in frame_prompts], device=text_features.device)
        per_frame = (image_features[1:] * text_features[which]).sum(-1)
        scores["clip_t"] = float(per_frame.mean())
        scores["clip_f"] = float((image_features[1:] * image_features[:-1]).sum(-1).mean())
    if scorers.dino is not None:
        similarity = _dino_self_similarity(scorers, [PIL.Image.fromarray(np.asarray(source)), *images[1:]])
        scores["dino_structure"] = float(((similarity[1:] - similarity[:1]) ** 2).mean())
    return scores


def frame_prompts(prompts: list[str], frames_per_segment: int) -> list[str]:
    """The prompt of each frame after the source frame: segment i's N frames have prompt i."""
    return [prompt for prompt in prompts for _ in range(frames_per_segment)]


def video_scores(
    frames: np.ndarray, source: np.ndarray, prompts: list[str], scorers: Scorers | None = None
) -> dict[str, float]:
    """metadata.json's `scores`: metrics.basic_scores, and `model_scores` with scorers; rounded."""
    scores = basic_scores(frames, source)
    if scorers is not None:
        scores.update(model_scores(scorers, frames, source, prompts))
    return {name: round(value, 6) for name, value in scores.items()}
