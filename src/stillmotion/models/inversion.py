"""Regularized DDIM inversion (pix2pix-zero): image latents -> the noise x_T that regenerates them.

Notation of DDIM (Song et al. 2020, eq. 12) run backwards: x_{t+1} = sqrt(a_{t+1}) x0_pred(x_t)
+ sqrt(1 - a_{t+1}) eps, with eps pushed towards i.i.d. N(0, 1) by pix2pix-zero's auto-correlation
pyramid and KL regularizers before every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler

from .params import MethodParams


def encode_latents(vae, image: torch.Tensor, mode: str = "mean", generator: torch.Generator | None = None):
    """(1, 3, H, W) image in [-1, 1] to scaled fp32 latents: the posterior mean, or a seeded sample."""
    posterior = vae.encode(image.to(vae.device, vae.dtype)).latent_dist
    latents = posterior.mean if mode == "mean" else posterior.sample(generator)
    return latents.float() * vae.config.scaling_factor


def auto_corr_loss(noise: torch.Tensor, generator: torch.Generator, min_roll: int = 1) -> torch.Tensor:
    """Squared auto-correlation of every (batch, channel) map at random rolls, over an avg-pool pyramid.

    Roll offsets are drawn from `generator` in [min_roll, H/2), in pix2pix-zero's order (batch,
    channel, pyramid level), then every map of a level is rolled at once with one gather. pix2pix-zero
    draws from [0, H/2), where a roll of 0 turns the term into the squared mean power (a pull towards
    zero noise, not a decorrelation); we default to min_roll=1, which needs maps of at least 4x4.
    """
    batch, channels = noise.shape[:2]
    sizes = [noise.shape[2]]  # the pyramid: halve until 8 or less
    while sizes[-1] > 8:
        sizes.append(sizes[-1] // 2)
    if sizes[-1] // 2 <= min_roll:
        raise ValueError(f"latents of {noise.shape[2]}x{noise.shape[3]} are too small to regularize")
    rolls = torch.tensor(
        [
            [
                [int(torch.randint(min_roll, size // 2, (1,), generator=generator)) for size in sizes]
                for _ in range(channels)
            ]
            for _ in range(batch)
        ],
        device=noise.device,
    )  # (B, C, levels)
    loss = noise.new_zeros(())
    level = noise
    for index in range(len(sizes)):
        shift = rolls[:, :, index, None, None]  # (B, C, 1, 1)
        height, width = level.shape[2:]
        rows = (torch.arange(height, device=noise.device)[None, None, :, None] - shift) % height  # roll dim 2
        cols = (torch.arange(width, device=noise.device)[None, None, None, :] - shift) % width  # roll dim 3
        rolled_h = level.gather(2, rows.expand(batch, channels, height, width))
        rolled_w = level.gather(3, cols.expand(batch, channels, height, width))
        loss = (
            loss
            + ((level * rolled_h).mean(dim=(2, 3)) ** 2).sum()
            + ((level * rolled_w).mean(dim=(2, 3)) ** 2).sum()
        )
        level = F.avg_pool2d(level, kernel_size=2)
    return loss


def kl_divergence(noise: torch.Tensor) -> torch.Tensor:
    """KL-style penalty pulling the noise's mean to 0 and variance to 1 (pix2pix-zero's form)."""
    mean, var = noise.mean(), noise.var()
    return var + mean**2 - 1 - torch.log(var + 1e-7)


def regularize_noise(
    noise: torch.Tensor, params: MethodParams, generator: torch.Generator, min_roll: int = 1
) -> torch.Tensor:
    """pix2pix-zero's noise regularization: gradient steps on the two losses, in fp32."""
    noise = noise.detach().float()
    with torch.enable_grad():
        for _ in range(params.regularization_steps):
            if params.lambda_auto_corr > 0:
                for _ in range(params.auto_corr_rolls):
                    var = noise.clone().requires_grad_(True)
                    (grad,) = torch.autograd.grad(auto_corr_loss(var, generator, min_roll), var)
                    noise = noise - params.lambda_auto_corr * grad / params.auto_corr_rolls
            if params.lambda_kl > 0:
                var = noise.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(kl_divergence(var), var)
                noise = noise - params.lambda_kl * grad
    return noise.detach()


@torch.no_grad()
def invert(
    unet: torch.nn.Module,
    scheduler_config: dict,
    latents: torch.Tensor,
    cond_embeds: torch.Tensor,
    params: MethodParams,
    generator: torch.Generator,
    min_roll: int = 1,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """DDIM-invert fp32 `latents` (1, C, h, w) conditioned on `cond_embeds` (1, T, D), no CFG."""
    if scheduler_config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError("only epsilon-prediction models are supported")
    scheduler = DDIMInverseScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(params.ddim_steps, device=latents.device)
    cond = cond_embeds.to(unet.device, unet.dtype)
    for i, t in enumerate(scheduler.timesteps):
        noise = unet(latents.to(unet.dtype), t, encoder_hidden_states=cond).sample
        noise = regularize_noise(noise, params, generator, min_roll)
        latents = scheduler.step(noise, t, latents).prev_sample
        if callback is not None:
            callback(i + 1, params.ddim_steps)
    return latents
