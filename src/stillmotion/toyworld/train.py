"""Train a tiny text-to-image latent diffusion model on the toy world, in the Stable Diffusion layout.

    stillmotion train-toy models/toyworld --vae-steps 1000 --unet-steps 3000 --hues full --seed 0

Writes model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/ (weights as fp16
safetensors), so `load_stable_diffusion` loads it exactly as it loads SD1.4. Recipe (from a trial
on 2-core machines, see NOTES.md): a 3-block VAE (32 px -> 8x8 latents) trained on L1 + MSE + KL;
then a small UNet and a 2-layer CLIP text encoder trained jointly on epsilon MSE over the encoded
latents, 10% empty captions for classifier-free guidance, EMA weights saved.

Budgets are step counts (the cosine learning-rate decay follows the step count), so the same command
and seed give the same weights on the same kind of CPU with the same thread count; other CPUs differ
in float rounding. `*_minutes` are optional safety caps: a run they stop is logged as such and
recorded in training.json, and is not reproducible.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.tiny import SD14_SCHEDULER, write_clip_tokenizer, write_pipeline_files
from .world import SIZE, draw_batch, vocabulary


def build_models(vocab_size: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=SIZE,
        mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        sample_size=SIZE // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(48, 96, 96),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=64,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    return vae, unet, text_encoder


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def _deadline(minutes: float | None) -> float:
    return math.inf if minutes is None else time.monotonic() + 60 * minutes


def train_vae(vae, images: np.ndarray, steps: int, generator: torch.Generator, log, minutes=None) -> int:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    deadline, step = _deadline(minutes), 0
    while step < steps and time.monotonic() < deadline:
        batch = to_tensor(images[torch.randint(len(images), (64,), generator=generator).numpy()])
        posterior = vae.encode(batch).latent_dist
        decoded = vae.decode(posterior.sample(generator)).sample
        kl = posterior.kl().mean() / batch[0].numel()
        loss = F.l1_loss(decoded, batch) + F.mse_loss(decoded, batch) + 1e-4 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 200 == 0:
            log(f"vae step {step}/{steps} loss {loss.item():.4f}")
    return step


@torch.no_grad()
def encode_all(vae, images: np.ndarray) -> torch.Tensor:
    return torch.cat(
        [vae.encode(to_tensor(images[i : i + 512])).latent_dist.mean for i in range(0, len(images), 512)]
    )


def train_denoiser(
    unet,
    text_encoder,
    tokenizer,
    latents,
    captions,
    steps,
    generator,
    log,
    minutes=None,
    lr=5e-4,
    weights: torch.Tensor | None = None,
):
    """Joint UNet + text encoder training on epsilon MSE, the learning rate decaying from `lr` to 0 on a
    cosine; returns EMA copies of both. `weights` (N, 1, h, w): each latent pixel's weight in the MSE
    (None: all alike)."""
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler.from_config({**SD14_SCHEDULER, "_class_name": "DDPMScheduler"})
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema_unet, ema_text = (
        copy.deepcopy(unet).requires_grad_(False),
        copy.deepcopy(text_encoder).requires_grad_(False),
    )
    tokens = tokenizer(captions + [""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    empty = tokens[-1:]
    deadline, step = _deadline(minutes), 0
    while step < steps and time.monotonic() < deadline:
        progress = step / steps  # cosine learning-rate decay over the step budget
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * progress))
        index = torch.randint(len(latents), (128,), generator=generator)
        ids = tokens[index].clone()
        ids[torch.rand(128, generator=generator) < 0.1] = empty  # 10% unconditional
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (128,), generator=generator)
        pred = unet(
            noise_schedule.add_noise(x0, noise, t), t, encoder_hidden_states=text_encoder(ids)[0]
        ).sample
        if weights is None:
            loss = F.mse_loss(pred, noise)
        else:  # a weighted mean: the loss keeps its scale, the weighted pixels their larger share
            weight = weights[index].expand_as(pred)
            loss = (weight * (pred - noise) ** 2).sum() / weight.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for e, p in zip(ema.parameters(), live.parameters(), strict=True):
                    e.lerp_(p, 1 - 0.999)
        step += 1
        if step % 100 == 0:
            log(f"unet step {step}/{steps} loss {loss.item():.4f} lr {optimizer.param_groups[0]['lr']:.2e}")
    return ema_unet, ema_text, step


def shape_weights(pixels: np.ndarray, side: int, weight: float) -> torch.Tensor:
    """(N, H, W, 3) uint8 images -> (N, 1, side, side) loss weights on their latent grid: 1 + `weight` on
    a latent pixel whose block of image pixels holds any of the shape, 1 on the black around it."""
    touched = torch.from_numpy(pixels.max(axis=-1) > 0).float()[:, None]
    return 1 + weight * F.max_pool2d(touched, pixels.shape[1] // side)


def check_recipe(unsized: float, vae_from, unet_from, small: float = 0.5, shape_weight: float = 0.0) -> None:
    """ValueError for a recipe that cannot train: `unsized` outside [0, 1], `small` outside (0, 1), a
    negative `shape_weight`, or a UNet trained on (`unet_from`) with a new VAE, whose latents are not the
    ones it learned."""
    if not 0 <= unsized <= 1:
        raise ValueError(f"unsized must be in [0, 1], not {unsized}")
    if not 0 < small < 1:
        raise ValueError(f"small must be in (0, 1) (both sizes are drawn), not {small}")
    if not 0 <= shape_weight < float("inf"):
        raise ValueError(f"shape_weight must be a finite number >= 0, not {shape_weight}")
    if unet_from is not None and vae_from is None:
        raise ValueError("--unet-from needs --vae-from (the VAE whose latents that UNet was trained on)")


def train_toy_model(
    out: str | Path,
    vae_steps: int = 1000,
    unet_steps: int = 3000,
    seed: int = 0,
    images: int = 50_000,
    log=print,
    vae_minutes: float | None = None,
    unet_minutes: float | None = None,
    hues: str = "full",
    vae_from: str | Path | None = None,
    unsized: float = 0.0,
    unet_from: str | Path | None = None,
    lr: float = 5e-4,
    small: float = 0.5,
    shape_weight: float = 0.0,
) -> Path:
    """Draw the data, train VAE then UNet + text encoder, save everything in the SD layout.

    `vae_from`: a model folder whose VAE is taken as it is, instead of training one (the UNet's latents are
    encoded by it from this run's images). `unet_from`: a model folder whose UNet and text encoder this run
    trains on from (a longer schedule in two runs, or the same model on other captions); `lr` is the peak of
    the denoiser's learning rate. `unsized`: the share of captions without a size word, `small` the share
    of small shapes (sample_truth). `shape_weight` > 0 weighs the denoiser's loss (shape_weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    check_recipe(unsized, vae_from, unet_from, small, shape_weight)
    out = Path(out)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vocab_size = write_clip_tokenizer(out / "tokenizer", tuple(vocabulary()))
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    vae, unet, text_encoder = build_models(vocab_size)
    if unet_from is not None:
        log(f"training on from the UNet and text encoder of {unet_from}")
        unet = UNet2DConditionModel.from_pretrained(Path(unet_from) / "unet", torch_dtype=torch.float32)
        text_encoder = CLIPTextModel.from_pretrained(
            Path(unet_from) / "text_encoder", torch_dtype=torch.float32
        )
        if text_encoder.config.vocab_size != vocab_size:
            raise ValueError(
                f"{unet_from}'s text encoder knows {text_encoder.config.vocab_size} tokens, not {vocab_size}"
            )
    # the data after the models (numpy's generator, not torch's: the same weights), so a folder that
    # cannot be trained on fails before minutes of drawing
    pixels, truths = draw_batch(images, np.random.default_rng(seed), hues, unsized, small)
    captions = [truth.caption for truth in truths]
    started = time.monotonic()
    if vae_from is None:
        log(f"training the VAE for {vae_steps} steps on {images} images")
        vae_done = train_vae(vae, pixels, vae_steps, generator, log, vae_minutes)
    else:
        log(f"taking the VAE of {vae_from}")
        vae = AutoencoderKL.from_pretrained(Path(vae_from) / "vae", torch_dtype=torch.float32)
        vae_steps = vae_done = 0
    vae_seconds = time.monotonic() - started
    if vae_done < vae_steps:
        log(f"time cap: the VAE stopped after {vae_done} of {vae_steps} steps")
    vae.eval().requires_grad_(False)
    means = encode_all(vae, pixels)
    if unet_from is None:  # unit-variance latents; a UNet trained on keeps the scale it learned on
        vae.register_to_config(scaling_factor=float(1 / means.std()))
    latents = means * vae.config.scaling_factor
    scale = vae.config.scaling_factor
    log(f"training UNet + text encoder for {unet_steps} steps (scaling factor {scale:.3f})")
    started = time.monotonic()
    weights = shape_weights(pixels, latents.shape[-1], shape_weight) if shape_weight else None
    unet, text_encoder, steps = train_denoiser(
        unet,
        text_encoder,
        tokenizer,
        latents,
        captions,
        unet_steps,
        generator,
        log,
        unet_minutes,
        lr,
        weights=weights,
    )
    unet_seconds = time.monotonic() - started
    if steps < unet_steps:
        log(f"time cap: the UNet stopped after {steps} of {unet_steps} steps")
    for name, module in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
        module.to(torch.float16).save_pretrained(out / name, safe_serialization=True)
    write_pipeline_files(out)
    recipe = {
        "seed": seed,
        "images": images,
        "hues": hues,
        "unsized": unsized,
        "small": small,
        "shape_weight": shape_weight,
        **({"vae_from": str(vae_from)} if vae_from is not None else {}),
        **({"unet_from": str(unet_from)} if unet_from is not None else {}),
        "lr": lr,
        "vae_steps": vae_done,
        "unet_steps": steps,
        "vae_steps_requested": vae_steps,
        "unet_steps_requested": unet_steps,
        "threads": torch.get_num_threads(),
        "vae_seconds": round(vae_seconds),
        "unet_seconds": round(unet_seconds),
        "stopped_by_time_cap": vae_done < vae_steps or steps < unet_steps,
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(recipe, indent=2))
    log(f"saved to {out} after {steps} UNet steps")
    return out
