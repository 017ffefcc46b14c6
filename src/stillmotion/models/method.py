"""The method end to end, as functions of the stages the batch flow caches separately.

sd = load_stable_diffusion(model_dir)
x_T = invert_source(sd, image, caption, params)          # real mode (or synthetic_noise)
rendered = render_keyframes(sd, x_T, caption, prompts, params, synthetic=False)
images = render_frames(sd, rendered, params)              # (1 + S * N, 3, H, W) in [-1, 1]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch

from .images import pil_to_tensor
from .insertion import decode_latents, motion_frames, spline_frames
from .inversion import encode_latents, invert
from .keyframes import guided_keyframes, keyframe_embeddings
from .loading import StableDiffusion
from .params import MethodParams
from .text import encode_text

Progress = Callable[[int, int], None]


@dataclass
class Rendered:
    """The source frame and the key frames of one video, as fp32 latents."""

    source_latent: torch.Tensor  # (1, C, h, w): the reference pass, edit weight 0
    keyframe_latents: torch.Tensor  # (S * K, C, h, w), segment-major
    truncated_prompts: list[str] = field(default_factory=list)  # texts cut to the encoder's length


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: the same draws on every device."""
    return torch.Generator().manual_seed(seed)


def latent_shape(sd: StableDiffusion) -> tuple[int, int, int, int]:
    side = sd.unet.config.sample_size
    return (1, sd.unet.config.in_channels, side, side)


def synthetic_noise(sd: StableDiffusion, seed: int) -> torch.Tensor:
    """Synthetic mode's x_T: Gaussian noise from the seed, fp32 on the model's device."""
    return torch.randn(latent_shape(sd), generator=seeded_generator(seed)).to(sd.device)


def invert_source(
    sd: StableDiffusion,
    image: PIL.Image.Image,
    caption: str,
    params: MethodParams,
    callback: Progress | None = None,
) -> torch.Tensor:
    """Real mode's x_T: encode the fitted image and invert it with regularized DDIM on the caption."""
    generator = seeded_generator(params.seed)
    latents = encode_latents(sd.vae, pil_to_tensor(image), params.encode, generator)
    cond, _ = encode_text(sd.tokenizer, sd.text_encoder, [caption])
    return invert(sd.unet, sd.scheduler_config, latents, cond, params, generator, callback=callback)


def render_keyframes(
    sd: StableDiffusion,
    inverted_noise: torch.Tensor,
    caption: str,
    prompts: list[str],
    params: MethodParams,
    synthetic: bool,
    callback: Progress | None = None,
    guidance: Sequence[float] | None = None,
) -> Rendered:
    """The reference pass and every segment's key frames, in one guided denoising loop.

    With `guidance`, every segment's key frames are made once per cross-attention guidance step in it
    (best-of-N candidates, candidate-major: (len(guidance) * S * K, C, h, w)), batched in the same loop.
    """
    negative = "" if synthetic else caption
    texts = [caption, negative, *prompts]
    embeds, truncated = encode_text(sd.tokenizer, sd.text_encoder, texts)  # (2 + S, T, D)
    caption_embeds, negative_embeds, prompt_embeds = embeds[:1], embeds[1:2], embeds[2:]
    edited = keyframe_embeddings(caption_embeds, prompt_embeds, params.keyframes, params.curve)
    xa_guidance: float | torch.Tensor = params.guidance_for(synthetic)
    if guidance is not None:
        xa_guidance = torch.tensor([step for step in guidance for _ in range(len(edited))])
        edited = edited.repeat(len(guidance), 1, 1)
    source, keyframes = guided_keyframes(
        sd.unet,
        sd.scheduler_config,
        inverted_noise.to(sd.device),
        caption_embeds,
        negative_embeds,
        edited,
        steps=params.steps,
        cfg_scale=params.cfg,
        xa_guidance=xa_guidance,
        batch_size=params.batch_size,
        callback=callback,
        cross_frame=params.cross,
    )
    cut = sorted({text for text, was_cut in zip(texts, truncated, strict=True) if was_cut})
    return Rendered(source, keyframes, cut)


def render_frames(sd: StableDiffusion, rendered: Rendered, params: MethodParams) -> torch.Tensor:
    """The source frame and every segment's N frames, decoded: (1 + S * N, 3, H, W) in [-1, 1].

    spline: latents on each segment's spline at even times (see insertion.spline_frames), decoded;
    adaptive: the same spline re-timed by the distance its decoded frames travel;
    motion: the source and key frames decoded, the frames between them motion-compensated.
    """
    keyframes, frames = params.keyframes, params.frames_per_segment
    if params.insertion == "motion":
        anchors = torch.cat([rendered.source_latent, rendered.keyframe_latents])
        images = _to_uint8(decode_latents(sd.vae, anchors, params.batch_size))  # (1 + S * K, H, W, 3)
        out, previous = [images[:1]], images[:1]
        for start in range(1, len(images), keyframes):
            segment = images[start : start + keyframes]
            out.append(motion_frames(np.concatenate([previous, segment]), keyframes, frames))
            previous = segment[-1:]
        return torch.from_numpy(np.concatenate(out)).permute(0, 3, 1, 2).float() / 127.5 - 1
    appearance = None
    if params.insertion == "adaptive":  # re-timed by the distance travelled in the decoded frames

        def appearance(latents: torch.Tensor) -> torch.Tensor:
            return decode_latents(sd.vae, latents, params.batch_size).clamp(-1, 1)

    inserted = spline_frames(
        rendered.source_latent, rendered.keyframe_latents, keyframes, frames, appearance=appearance
    )
    latents = torch.cat([rendered.source_latent, inserted.to(rendered.source_latent.device)])
    return decode_latents(sd.vae, latents, params.batch_size)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] to (B, H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def decode_keyframes(sd: StableDiffusion, rendered: Rendered, params: MethodParams) -> torch.Tensor:
    """The key frames as images (S * K, 3, H, W) in [-1, 1]."""
    return decode_latents(sd.vae, rendered.keyframe_latents, params.batch_size)
