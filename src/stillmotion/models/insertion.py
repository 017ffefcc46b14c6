"""Frame insertion: a natural cubic spline through each segment's latent anchors, then VAE decode."""

from __future__ import annotations

import numpy as np
import torch
from scipy.interpolate import CubicSpline


def spline_frames(
    source_latent: torch.Tensor, keyframe_latents: torch.Tensor, keyframes: int, frames: int
) -> torch.Tensor:
    """Latents of every output frame after the source: (S * N, C, h, w) for S segments of N frames.

    Segment i's spline runs through K+1 anchors at t = 0..K (the previous anchor, then its key
    frames); its frame j = 1..N sits at t = jK/N, so key frames are frames when K divides N.
    """
    shape = source_latent.shape[1:]  # (C, h, w)
    segments = keyframe_latents.shape[0] // keyframes
    times = np.arange(1, frames + 1) * keyframes / frames  # (N,)
    previous = source_latent.reshape(1, -1).double().cpu().numpy()
    out = []
    for segment in keyframe_latents.reshape(segments, keyframes, -1).double().cpu().numpy():  # (K, C*h*w)
        anchors = np.concatenate([previous, segment])  # (K + 1, C*h*w)
        spline = CubicSpline(np.arange(keyframes + 1), anchors, axis=0, bc_type="natural")
        out.append(spline(times))  # (N, C*h*w)
        previous = segment[-1:]
    stacked = torch.from_numpy(np.concatenate(out)).float()
    return stacked.reshape(-1, *shape).to(source_latent.device)


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Scaled latents (B, C, h, w) to images (B, 3, H, W) in [-1, 1], fp32 on the CPU."""
    images = []
    for chunk in latents.split(batch_size):
        decoded = vae.decode((chunk / vae.config.scaling_factor).to(vae.device, vae.dtype)).sample
        images.append(decoded.float().cpu())
    return torch.cat(images)
