"""Key frames: edited text embeddings denoised from x_T under cross-attention guidance, as one batch.

One denoising loop serves the whole video. At every step the reference pass (x_T denoised with
the caption) records the attn2 maps of that step, then every key frame takes one guided step
against them (pix2pix-zero's per-step recipe), so reference maps exist for one step at a time,
on the device, whatever K is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler

from .attention import AttentionStore, CrossFrame, attention_store
from .params import Curve, InjectMode, XaSchedule


def edit_weights(keyframes: int, curve: Curve = "log") -> list[float]:
    """w_k for k = 1..K: the seed's ln(1 + k(e-1)/K) (w_K = 1), or k/K."""
    if curve == "log":
        return [math.log(1 + k * (math.e - 1) / keyframes) for k in range(1, keyframes + 1)]
    if curve == "linear":
        return [k / keyframes for k in range(1, keyframes + 1)]
    raise ValueError(f"unknown curve {curve!r}")


def keyframe_embeddings(
    caption_embeds: torch.Tensor, prompt_embeds: torch.Tensor, keyframes: int, curve: Curve = "log"
) -> torch.Tensor:
    """E(caption) + d_{i-1} + w_k (d_i - d_{i-1}) for every segment i and key frame k.

    caption_embeds (1, T, D), prompt_embeds (S, T, D) -> (S * K, T, D), segment-major.
    """
    directions = prompt_embeds - caption_embeds  # d_i, (S, T, D)
    previous = torch.cat([torch.zeros_like(directions[:1]), directions[:-1]])  # d_{i-1}, d_0 = 0
    weights = torch.tensor(edit_weights(keyframes, curve), dtype=directions.dtype, device=directions.device)
    step = (directions - previous)[:, None]  # (S, 1, T, D)
    embeds = caption_embeds + previous[:, None] + weights[None, :, None, None] * step  # (S, K, T, D)
    return embeds.reshape(-1, *caption_embeds.shape[1:])


def guidance_at(
    step: int,
    steps: int,
    xa_guidance: float | torch.Tensor,
    until: float = 1.0,
    schedule: XaSchedule = "constant",
) -> float:
    """The guidance step at denoising step `step` (0-based): `xa_guidance` for the first `until` of the
    steps ("constant"), or falling linearly from it to 0 there ("linear"); 0 after."""
    active = math.ceil(until * steps - 1e-9)
    if step >= active:
        return 0.0
    return xa_guidance if schedule == "constant" else xa_guidance * (1 - step / active)


def uses_cfg(scale: float) -> bool:
    """pix2pix-zero's rule: classifier-free guidance runs only at a scale above 1 (at 1 it is the
    conditional prediction alone, so one copy of each latent is enough)."""
    return scale > 1.0


def classifier_free_guidance(noise: torch.Tensor, scale: float) -> torch.Tensor:
    """(2B, ...) [uncond; cond] noise predictions to eps_u + s (eps_c - eps_u); (B, ...) unchanged
    when CFG is off."""
    if not uses_cfg(scale):
        return noise
    uncond, cond = noise.chunk(2)
    return uncond + scale * (cond - uncond)


def attention_loss(
    unet: torch.nn.Module, store: AttentionStore, x_in: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor
) -> torch.Tensor:
    """The guidance loss of a [uncond; cond] batch against `store.reference` (summed over frames)."""
    store.mode, store.loss = "guide", 0.0
    unet(x_in.to(unet.dtype), t, encoder_hidden_states=embeds)
    store.mode = "off"
    return store.loss


def guided_step(
    unet: torch.nn.Module,
    scheduler: DDIMScheduler,
    store: AttentionStore,
    latents: torch.Tensor,
    t: torch.Tensor,
    negative_embeds: torch.Tensor,
    edited_embeds: torch.Tensor,
    cfg_scale: float,
    xa_guidance: float | torch.Tensor,
) -> torch.Tensor:
    """One pix2pix-zero editing step for B key frames at once; `store.reference` holds step t's maps.

    latents (B, C, h, w) fp32; edited_embeds (B, T, D); negative_embeds (1, T, D); xa_guidance one
    step for all frames, or (B,) one per frame. Without CFG (scale <= 1) there is one copy per frame,
    conditioned on its edited embedding.
    """
    frames, copies = latents.shape[0], 2 if uses_cfg(cfg_scale) else 1
    if isinstance(xa_guidance, torch.Tensor):  # per frame: the same step for each copy of a frame
        xa_guidance = torch.cat([xa_guidance.to(latents)] * copies)[:, None, None, None]
    if copies == 2:
        embeds = torch.cat([negative_embeds.expand(frames, -1, -1), edited_embeds])  # (2B, T, D)
    else:
        embeds = edited_embeds  # (B, T, D)
    embeds = embeds.to(unet.dtype)
    x_in = torch.cat([latents] * copies)  # (copies * B, C, h, w): [uncond copies; cond copies]
    if bool((torch.as_tensor(xa_guidance) > 0).any()):
        # 1. move each copy one SGD step down its own attention-map loss (frames' losses are summed)
        x_in = x_in.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(attention_loss(unet, store, x_in, t, embeds), x_in)
        x_in = (x_in - xa_guidance * grad).detach()
    # 2. recompute the noise at the moved copies, combine with CFG, advance the uncond copy
    noise = unet(x_in.to(unet.dtype), t, encoder_hidden_states=embeds).sample.float()
    noise = classifier_free_guidance(noise, cfg_scale)
    return scheduler.step(noise, t, x_in.chunk(copies)[0]).prev_sample


@torch.no_grad()
def guided_keyframes(
    unet: torch.nn.Module,
    scheduler_config: dict,
    inverted_noise: torch.Tensor,
    caption_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    keyframe_embeds: torch.Tensor,
    steps: int,
    cfg_scale: float,
    xa_guidance: float | torch.Tensor,
    batch_size: int = 8,
    callback: Callable[[int, int], None] | None = None,
    cross_frame: CrossFrame = "off",
    guidance_until: float = 1.0,
    guidance_schedule: XaSchedule = "constant",
    keyframe_negative_embeds: torch.Tensor | None = None,
    negative_until: float = 1.0,
    negative_from: float = 0.0,
    edit_from: float = 0.0,
    inject_features: float = 0.0,
    inject_layers: tuple[str, ...] = (),
    inject_mode: InjectMode = "replace",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise the reference (source frame) and every key frame from x_T in one loop.

    inverted_noise (1, C, h, w) fp32; caption/negative embeds (1, T, D); keyframe_embeds (F, T, D);
    xa_guidance one step for every key frame, or (F,) one per key frame (best-of-N candidates).
    Guidance runs for the first `guidance_until` of the steps (see `guidance_at`). With
    `keyframe_negative_embeds` (1, T, D) the key frames' CFG takes it as the negative, while the reference
    pass follows its conditional prediction alone (what a negative equal to the caption gives) and
    records its uncond maps under that negative, for the key frames' uncond copies to match; on the steps
    from `negative_from` to `negative_until` only, `negative_embeds` outside them. With `edit_from` > 0
    the key frames follow the reference for the first `edit_from` of the steps (the layout they share is
    settled there) and branch from its latent, to their edited embeddings, after. For the first
    `inject_features` of the steps the key frames take the reference pass's output of each of
    `inject_layers` in place of their own (Plug-and-Play's feature injection), or only their layout with
    `inject_mode` "layout" (see attention.FeatureInjection).
    Returns (source latent (1, C, h, w), key-frame latents (F, C, h, w)), both fp32.
    """
    # 1. prepare timesteps and the per-chunk state
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps, device=inverted_noise.device)
    copies = 2 if uses_cfg(cfg_scale) else 1
    own_negative = keyframe_negative_embeds is not None  # the key frames' own: see the docstring
    own_steps = math.ceil(negative_until * steps - 1e-9) if own_negative else 0
    own_from = math.ceil(negative_from * steps - 1e-9)  # the first step with the key frames' own negative
    chunks = list(keyframe_embeds.split(batch_size))
    if isinstance(xa_guidance, torch.Tensor):
        guidance = list(xa_guidance.split(batch_size))
    else:
        guidance = [xa_guidance] * len(chunks)
    source = inverted_noise.clone()
    latents = [inverted_noise.expand(len(chunk), -1, -1, -1).clone() for chunk in chunks]
    shared = math.floor(edit_from * steps + 1e-9)  # steps the key frames take as the reference
    injected = math.ceil(inject_features * steps - 1e-9) if inject_layers else 0  # steps with injection
    # 2. denoising loop: reference pass, then a guided step for each chunk of key frames
    with attention_store(unet, cross_frame, inject_layers if injected else (), inject_mode) as store:
        for i, t in enumerate(scheduler.timesteps):
            negative = keyframe_negative_embeds if own_from <= i < own_steps else negative_embeds
            reference_embeds = torch.cat([negative, caption_embeds][-copies:]).to(unet.dtype)
            # maps are recorded only on the steps the key frames take on their own (`edit_from`)
            store.mode, store.keyframes = ("record" if i >= shared else "off"), False
            store.inject = shared <= i < injected  # nothing to inject while the key frames are the reference
            x_in = torch.cat([source] * copies).to(unet.dtype)
            noise = unet(x_in, t, encoder_hidden_states=reference_embeds).sample.float()
            noise = noise.chunk(copies)[-1] if own_negative else classifier_free_guidance(noise, cfg_scale)
            source = scheduler.step(noise, t, source).prev_sample
            if i >= shared:
                store.keyframes = True
                weight = [guidance_at(i, steps, step, guidance_until, guidance_schedule) for step in guidance]
                for j, chunk in enumerate(chunks):
                    latents[j] = guided_step(
                        unet, scheduler, store, latents[j], t, negative, chunk, cfg_scale, weight[j]
                    )
            elif i + 1 == shared:  # the key frames were the reference so far: they branch from its latent
                latents = [source.expand(len(chunk), -1, -1, -1).clone() for chunk in chunks]
            store.reference.clear()
            store.frame_kv.clear()
            store.features.clear()
            if callback is not None:
                callback(i + 1, steps)
    return source, torch.cat(latents)
