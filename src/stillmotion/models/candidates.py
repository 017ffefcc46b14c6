"""Best of N: render a video's key frames N ways, judge each, keep the best.

    rendered, candidates = render_candidates(sd, x_T, caption, prompts, params, synthetic)

What varies (candidate 0 is always the video's own parameters, so N = 1 is the video without best-of-N):
- synthetic mode: the seed of x_T (candidate c uses seed + c), the "multiple samplings" the paper
  asks of videos with large movements; each candidate has its own reference pass.
- real mode: the inversion is deterministic and shared, so what varies is the cross-attention
  guidance step, times 1, 2, 1/2, 4, 1/4, ...: the trade between how far the edit goes and how well
  the structure holds, which is where real-mode edits fail (partial edits, lost shapes). All
  candidates share the reference pass and go through the UNet in the same batches.

Each candidate is judged with the diffusion model alone, no extra weights:
- margin: how much more each segment's last key frame looks like its prompt than like the one before
  it (the caption, for the first). The UNet as a zero-shot classifier (Li et al. 2023, "Your
  diffusion model is secretly a zero-shot classifier"): the latent is noised at MARGIN_TIMESTEPS with
  fixed noise, and margin = error(previous prompt) - error(prompt), the errors being the mean squared
  noise-prediction errors; > 0 means the edit is complete. A video's margin is its segments' smallest.
- structure: edge SSIM of the decoded key frames against the decoded reference frame (their mean).
The best is the most faithful structure among the candidates whose edit went at least
COMPLETE_SHARE of the way the farthest one went (margin >= half the largest margin); if no margin is
positive, the largest. "margin > 0" alone (the first rule) let through candidates that had barely
begun the edit: on 24 unseen toy edits it chose as many wrong colours as one candidate did
(benchmarks/candidates.py, RESULTS 2026-12-03).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler

from ..metrics import edge_ssim
from .insertion import decode_latents
from .loading import StableDiffusion
from .method import Rendered, render_keyframes, synthetic_noise
from .params import MethodParams
from .text import encode_text

MARGIN_TIMESTEPS = (300, 500, 700)  # where the zero-shot classifier compares the prompts
MARGIN_SEED = 0  # its fixed noise
COMPLETE_SHARE = 0.5  # a candidate counts as complete when its margin is this share of the largest
SELECTION_VERSION = 2  # in the key frames' key of best-of-N videos: bumped when the choice changes


def guidance_factor(candidate: int) -> float:
    """Candidate c's multiple of the guidance step: 1, 2, 1/2, 4, 1/4, ..."""
    return 2.0 ** ((candidate + 1) // 2) if candidate % 2 else 2.0 ** -(candidate // 2)


def variants(params: MethodParams, synthetic: bool) -> list[dict]:
    """What each of the params' candidates changes: {"seed": ...} or {"xa_guidance": ...}."""
    if synthetic:
        return [{"seed": params.seed + c} for c in range(params.candidates)]
    step = params.guidance_for(synthetic)
    return [{"xa_guidance": step * guidance_factor(c)} for c in range(params.candidates)]


@torch.no_grad()
def text_margin(
    sd: StableDiffusion, latents: torch.Tensor, prompt_embeds: torch.Tensor, previous_embeds: torch.Tensor
) -> torch.Tensor:
    """(B,) how much better the UNet predicts the noise of `latents` (B, C, h, w) with `prompt_embeds`
    than with `previous_embeds` (B, T, D each), averaged over MARGIN_TIMESTEPS."""
    scheduler = DDIMScheduler.from_config(sd.scheduler_config)
    generator = torch.Generator().manual_seed(MARGIN_SEED)
    margins = []
    for t in MARGIN_TIMESTEPS:
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timestep = torch.tensor(t, device=latents.device)
        noisy = scheduler.add_noise(latents, noise, timestep)
        x_in = torch.cat([noisy, noisy]).to(sd.unet.dtype)
        embeds = torch.cat([prompt_embeds, previous_embeds]).to(sd.unet.dtype)
        predicted = sd.unet(x_in, timestep, encoder_hidden_states=embeds).sample.float()
        errors = ((predicted - torch.cat([noise, noise])) ** 2).flatten(1).mean(1)
        with_prompt, with_previous = errors.chunk(2)
        margins.append(with_previous - with_prompt)
    return torch.stack(margins).mean(0)


def _uint8(images: torch.Tensor) -> np.ndarray:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def judge(sd: StableDiffusion, rendered: Rendered, caption: str, prompts: list[str], params) -> dict:
    """A candidate's margin (its segments' smallest) and structure; see the module's docstring."""
    embeds, _ = encode_text(sd.tokenizer, sd.text_encoder, [caption, *prompts])
    embeds = embeds.to(sd.device)
    last = rendered.keyframe_latents[params.keyframes - 1 :: params.keyframes]  # (S, C, h, w)
    margin = text_margin(sd, last.to(sd.device), embeds[1:], embeds[:-1])
    images = _uint8(decode_latents(sd.vae, torch.cat([rendered.source_latent, rendered.keyframe_latents])))
    structure = float(np.mean([edge_ssim(image, images[0]) for image in images[1:]]))
    return {"margin": round(float(margin.min()), 6), "structure": round(structure, 6)}


def best(judged: list[dict]) -> int:
    """The index of the best candidate: among those whose margin is >= COMPLETE_SHARE x the largest
    (when that is > 0), the best structure; else the largest margin (ties: the earliest, so candidate
    0 wins when nothing is better)."""
    top = max(j["margin"] for j in judged)
    if top > 0:
        complete = [i for i, j in enumerate(judged) if j["margin"] >= COMPLETE_SHARE * top]
        return max(complete, key=lambda i: (judged[i]["structure"], -i))
    return max(range(len(judged)), key=lambda i: (judged[i]["margin"], -i))


def render_candidates(
    sd: StableDiffusion,
    inverted_noise: torch.Tensor | None,
    caption: str,
    prompts: list[str],
    params: MethodParams,
    synthetic: bool,
    callback=None,
) -> tuple[Rendered, list[dict]]:
    """The best of the params' candidates and every candidate's record ({"varied", "margin",
    "structure", "chosen"}); with one candidate, render_keyframes' result and no records.

    `inverted_noise` is real mode's x_T (synthetic mode draws each candidate's from its seed)."""
    if params.candidates == 1:
        noise = synthetic_noise(sd, params.seed) if synthetic else inverted_noise
        return render_keyframes(sd, noise, caption, prompts, params, synthetic, callback), []
    varied = variants(params, synthetic)
    if synthetic:
        made = [
            render_keyframes(sd, synthetic_noise(sd, v["seed"]), caption, prompts, params, True, callback)
            for v in varied
        ]
    else:  # one loop: the shared reference pass, every candidate's key frames batched together
        steps = [v["xa_guidance"] for v in varied]
        together = render_keyframes(sd, inverted_noise, caption, prompts, params, False, callback, steps)
        made = [
            Rendered(together.source_latent, chunk, together.truncated_prompts)
            for chunk in together.keyframe_latents.chunk(len(varied))
        ]
    judged = [judge(sd, rendered, caption, prompts, params) for rendered in made]
    chosen = best(judged)
    records = [
        {"varied": v, **j, "chosen": i == chosen} for i, (v, j) in enumerate(zip(varied, judged, strict=True))
    ]
    return made[chosen], records
