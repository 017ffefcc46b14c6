"""The method end to end, as functions of the stages the batch flow caches separately.

sd = load_stable_diffusion(model_dir)
x_T = invert_source(sd, image, caption, params)          # real mode (or synthetic_noise)
rendered = render_keyframes(sd, x_T, caption, prompts, params, synthetic=False)
images = render_frames(sd, rendered, params)              # (1 + S * N, 3, H, W) in [-1, 1]
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch

from .images import pil_to_tensor
from .insertion import decode_latents, motion_frames, spline_frames
from .inversion import encode_latents, invert
from .keyframes import edit_weights, guided_keyframes, keyframe_embeddings
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
    edited = edit_embeddings(sd, caption, caption_embeds, prompts, prompt_embeds, params)
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
        steps=params.ddim_steps,
        cfg_scale=params.cfg,
        xa_guidance=xa_guidance,
        batch_size=params.batch_size,
        callback=callback,
        keyframe_negative_embeds=keyframe_negative(sd, params, synthetic, caption, prompts),
        **params.loop_options(),
    )
    cut = sorted({text for text, was_cut in zip(texts, truncated, strict=True) if was_cut})
    candidates = keyframes.chunk(len(guidance)) if guidance is not None else [keyframes]
    return Rendered(source, torch.cat([inbetween_latents(source, c, params) for c in candidates]), cut)


def keyframe_negative(
    sd: StableDiffusion, params: MethodParams, synthetic: bool, caption: str, prompts: Sequence[str]
) -> torch.Tensor | None:
    """The key frames' own CFG negative where real mode asks for one: E("") ("empty"), or E(the caption
    less the words the prompts change) ("neutral", see `neutral_caption`); None: the reference's negative
    (the caption in real mode, "" in synthetic mode)."""
    if synthetic or params.negative_prompt == "caption":
        return None
    text = "" if params.negative_prompt == "empty" else neutral_caption(caption, prompts)
    return encode_text(sd.tokenizer, sd.text_encoder, [text])[0]


def _changed_runs(old: list[str], new: list[str]) -> list[tuple[int, int, int, int]]:
    """The runs of words `new` changes in `old`, as (i1, i2, j1, j2): old[i1:i2] became new[j1:j2]."""
    matcher = difflib.SequenceMatcher(a=old, b=new)
    return [tuple(op[1:]) for op in matcher.get_opcodes() if op[0] != "equal"]


def word_change(caption: str, prompt: str) -> tuple[str, str] | None:
    """The one run of words the prompt changes in the caption, ("red", "blue") for "a big red circle" ->
    "a big blue circle"; None when they differ in more than one place, or not at all."""
    old, new = caption.split(), prompt.split()
    changes = _changed_runs(old, new)
    if len(changes) != 1:
        return None
    i1, i2, j1, j2 = changes[0]
    return " ".join(old[i1:i2]), " ".join(new[j1:j2])


def neutral_caption(caption: str, prompts: Sequence[str]) -> str:
    """The caption less every word some prompt changes or drops: "a big circle" for "a big red circle" ->
    "a big blue circle" -> "a big green circle". As CFG's negative it leaves what the edit keeps out of
    the push, which then runs towards the new words alone: not away from the old ones (the caption as
    negative, on past the target) nor towards the whole prompt (the empty prompt, which redraws what the
    edit keeps too). The empty string when every word changes."""
    words = caption.split()
    runs = [run for prompt in prompts for run in _changed_runs(words, prompt.split())]
    changed = {i for i1, i2, _, _ in runs for i in range(i1, i2)}
    return " ".join(word for i, word in enumerate(words) if i not in changed)


def edit_notes(tokenizer, caption: str, prompts: Sequence[str]) -> list[str]:
    """A note per prompt whose edit can do nothing visible: one the tokenizer reads exactly as the text
    before it (the caption for prompt 1, else the previous prompt), so its segment's edit direction is
    zero; or one whose new words the tokenizer does not know (its unknown token, or spelled out letter by
    letter, as a toy model's ten-word vocabulary spells "purple"), so the direction holds nothing the
    model learned. Prompts are numbered from 1."""
    notes, before, before_name = [], caption, "the caption"
    for number, prompt in enumerate(prompts, 1):
        if tokenizer(prompt).input_ids == tokenizer(before).input_ids:
            notes.append(
                f"prompt {number} {prompt!r} reads as {before_name} to the model's tokenizer: the edit "
                f"direction of segment {number} is zero, so its frames do not change"
            )
        else:
            known = set(before.lower().split())
            unknown = [word for word in dict.fromkeys(prompt.lower().split()) if word not in known]
            unknown = [word for word in unknown if _unknown_word(tokenizer, word)]
            if unknown:
                words = ", ".join(repr(word) for word in unknown)
                notes.append(
                    f"prompt {number} {prompt!r}: the model's tokenizer does not know {words} (spelled "
                    "letter by letter or unknown): the edit direction is (near) zero for what the model "
                    "learned, so the video may not change"
                )
        before, before_name = prompt, f"prompt {number}"
    return notes


def _unknown_word(tokenizer, word: str) -> bool:
    """Whether the tokenizer has no piece for a word of two or more letters: it maps it to its unknown
    token, or only to single characters."""
    word = word.strip(".,;:!?\"'()")
    if len(word) < 2:
        return False
    pieces = tokenizer.tokenize(word)
    unknown = tokenizer.unk_token
    return any(piece == unknown for piece in pieces) or all(
        len(piece.removesuffix("</w>")) == 1 for piece in pieces
    )


def sentence_targets(
    sd: StableDiffusion,
    caption: str,
    caption_embeds: torch.Tensor,
    prompts: list[str],
    prompt_embeds: torch.Tensor,
    templates: tuple[str, ...],
) -> torch.Tensor:
    """pix2pix-zero's edit directions as target embeddings E(caption) + d_i, (S, T, D): d_i is the mean
    embedding of the templates with prompt i's word minus the mean with the caption's word. A prompt that
    does not change exactly one run of words keeps its own embedding (the "prompt" direction)."""
    targets = []
    for prompt, own in zip(prompts, prompt_embeds, strict=True):
        change = word_change(caption, prompt)
        if change is None:
            targets.append(own)
            continue
        old, new = change
        sentences = [t.format(word).replace("  ", " ").strip() for word in (old, new) for t in templates]
        embeds, _ = encode_text(sd.tokenizer, sd.text_encoder, sentences)
        old_mean, new_mean = embeds[: len(templates)].mean(0), embeds[len(templates) :].mean(0)
        targets.append(caption_embeds[0] + new_mean - old_mean)
    return torch.stack(targets)


def edit_embeddings(
    sd: StableDiffusion,
    caption: str,
    caption_embeds: torch.Tensor,
    prompts: list[str],
    prompt_embeds: torch.Tensor,
    params: MethodParams,
) -> torch.Tensor:
    """The embeddings of the key frames to denoise: (S * K, T, D) segment-major, or (S, T, D), each
    segment's last, when the in-between key frames come from latents (see `inbetween_latents`)."""
    if params.edit_direction == "sentences":
        templates = params.templates
        prompt_embeds = sentence_targets(sd, caption, caption_embeds, prompts, prompt_embeds, templates)
    denoised = params.keyframes if params.inbetween_mode == "embedding" else 1
    return keyframe_embeddings(caption_embeds, prompt_embeds, denoised, params.curve)


def inbetween_latents(source: torch.Tensor, keyframes: torch.Tensor, params: MethodParams) -> torch.Tensor:
    """Every segment's K key-frame latents (S * K, C, h, w). With in-between key frames from embeddings
    they are `keyframes` as denoised; from latents, `keyframes` holds each segment's last key frame
    (S, C, h, w) and key frame k lies at w_k of the way there from the previous anchor (the source, or
    the previous segment's last key frame), w_k being the edit-weight curve."""
    if params.inbetween_mode == "embedding":
        return keyframes
    weights = torch.tensor(edit_weights(params.keyframes, params.curve), dtype=keyframes.dtype)
    weights = weights.to(keyframes.device)[:, None, None, None]  # (K, 1, 1, 1)
    previous = torch.cat([source, keyframes[:-1]])  # (S, C, h, w)
    anchors = previous[:, None] + weights[None] * (keyframes - previous)[:, None]  # (S, K, C, h, w)
    return anchors.reshape(-1, *keyframes.shape[1:])


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


def start_on_input(sd: StableDiffusion, rendered: Rendered, image: PIL.Image.Image) -> Rendered:
    """Real mode: the video starts on the fitted input itself. The source latent (the reference pass, the
    caption's reconstruction of x_T) is replaced by the input's own VAE latent (the posterior mean), so
    the first frame (source.png) is the input through the VAE alone, and the frames between it and the
    first key frame run on the spline from it (spline_frames, re-timed with the others under adaptive
    insertion). The key frames are unchanged. Call between render_candidates and render_frames."""
    with torch.no_grad():
        latent = encode_latents(sd.vae, pil_to_tensor(image).to(sd.device))
    latent = latent.to(rendered.source_latent.device, rendered.source_latent.dtype)
    return Rendered(latent, rendered.keyframe_latents, rendered.truncated_prompts)
