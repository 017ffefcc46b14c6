"""Frame insertion between key frames: a natural cubic spline through each segment's latent anchors
(uniform in the spline's parameter, or re-timed by the distance travelled), then VAE decode; or
motion-compensated in-betweens of the decoded anchors (ffmpeg's minterpolate)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.interpolate import CubicSpline

ARC_SAMPLES = 4  # spline samples per unit of its parameter when measuring the distance travelled

Appearance = Callable[[torch.Tensor], torch.Tensor]  # latents (B, C, h, w) -> what a viewer sees (B, ...)


def spline_frames(
    source_latent: torch.Tensor,
    keyframe_latents: torch.Tensor,
    keyframes: int,
    frames: int,
    appearance: Appearance | None = None,
) -> torch.Tensor:
    """Latents of every output frame after the source: (S * N, C, h, w) for S segments of N frames.

    Segment i's spline runs through K+1 anchors at t = 0..K (the previous anchor, then its key
    frames); its frame j = 1..N sits at t = jK/N, so key frames are frames when K divides N. With
    `appearance` (e.g. the VAE decode), frame j sits where the segment has travelled j/N of the
    distance its appearance covers instead (mean absolute change, measured at ARC_SAMPLES points per
    unit of t), so the steps between frames are about the same size; it still ends on its last key
    frame.
    """
    shape = source_latent.shape[1:]  # (C, h, w)
    segments = keyframe_latents.shape[0] // keyframes
    uniform = np.arange(1, frames + 1) * keyframes / frames  # (N,)
    previous = source_latent.reshape(1, -1).double().cpu().numpy()
    out = []
    for segment in keyframe_latents.reshape(segments, keyframes, -1).double().cpu().numpy():  # (K, C*h*w)
        anchors = np.concatenate([previous, segment])  # (K + 1, C*h*w)
        spline = CubicSpline(np.arange(keyframes + 1), anchors, axis=0, bc_type="natural")
        times = uniform
        if appearance is not None:
            dense = np.linspace(0, keyframes, keyframes * ARC_SAMPLES + 1)
            latents = torch.from_numpy(spline(dense)).float().reshape(-1, *shape).to(source_latent.device)
            seen = appearance(latents).float().flatten(1)
            times = retimed(dense, (seen[1:] - seen[:-1]).abs().mean(1).cpu().numpy(), frames)
        out.append(spline(times))  # (N, C*h*w)
        previous = segment[-1:]
    stacked = torch.from_numpy(np.concatenate(out)).float()
    return stacked.reshape(-1, *shape).to(source_latent.device)


def retimed(times: np.ndarray, steps: np.ndarray, frames: int) -> np.ndarray:
    """The N times, among a path sampled at `times` with `steps` between samples, at which it has
    travelled 1/N, 2/N, .., N/N of its distance (the uniform times when it does not move)."""
    travelled = np.concatenate([[0.0], np.cumsum(steps)])
    if travelled[-1] <= 0:
        return times[0] + np.arange(1, frames + 1) * (times[-1] - times[0]) / frames
    return np.interp(np.arange(1, frames + 1) / frames * travelled[-1], travelled, times)


def motion_frames(anchors: np.ndarray, keyframes: int, frames: int) -> np.ndarray:
    """Motion-compensated in-betweens of a segment's decoded anchors: (K+1, H, W, 3) uint8 images at
    t = 0..K (the previous anchor, then its key frames) to the N frames at t = jK/N, j = 1..N, by
    ffmpeg's minterpolate (motion-compensated interpolation, scene-change detection off).

    The anchors go in one per second and come out at N/K frames per second, so output frame j is at
    t = jK/N; frames that land on an anchor are the anchor itself.
    """
    import ffmpeg
    import imageio_ffmpeg

    _, height, width, _ = anchors.shape
    # minterpolate stops one input frame early: the last anchor goes in twice
    anchors = np.concatenate([anchors, anchors[-1:]])
    stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=1)
    rate = f"{frames}/{keyframes}"
    options = {"mi_mode": "mci", "mc_mode": "aobmc", "me_mode": "bidir", "scd": "none"}
    stream = stream.filter("minterpolate", fps=rate, **options)
    stream = ffmpeg.output(stream, "pipe:", format="rawvideo", pix_fmt="rgb24", r=rate)
    try:
        raw, _ = ffmpeg.run(
            stream,
            cmd=imageio_ffmpeg.get_ffmpeg_exe(),
            input=np.ascontiguousarray(anchors, dtype=np.uint8).tobytes(),
            capture_stdout=True,
            capture_stderr=True,
        )
    except ffmpeg.Error as error:
        tail = (error.stderr or b"").decode(errors="replace").strip().splitlines()[-2:]
        raise RuntimeError("ffmpeg minterpolate failed: " + " | ".join(tail)) from None
    out = np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width, 3)
    result = out[1 : frames + 1].copy()  # output frame m is at t = mK/N
    if len(result) != frames:
        raise RuntimeError(f"ffmpeg minterpolate gave {len(out)} frames, not {frames + 1}")
    for j in range(1, frames + 1):  # exact anchors where a frame lands on one
        if (j * keyframes) % frames == 0:
            result[j - 1] = anchors[j * keyframes // frames]
    return result


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Scaled latents (B, C, h, w) to images (B, 3, H, W) in [-1, 1], fp32 on the CPU."""
    images = []
    for chunk in latents.split(batch_size):
        decoded = vae.decode((chunk / vae.config.scaling_factor).to(vae.device, vae.dtype)).sample
        images.append(decoded.float().cpu())
    return torch.cat(images)
