"""Quality metrics that need no hub weights: structure of any image pair, smoothness of any video.

Toy-world metrics with ground truth (colour and shape fidelity, mask IoU, centroid shift) live in
`stillmotion.toyworld.judge`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    return image @ [0.299, 0.587, 0.114] / 255 if image.ndim == 3 else image / 255


def edges(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of an (H, W[, 3]) image, in [0, ~4] (borders: nearest pixel)."""
    gray = _gray(image)
    return np.hypot(ndimage.sobel(gray, axis=1, mode="nearest"), ndimage.sobel(gray, axis=0, mode="nearest"))


def ssim(a: np.ndarray, b: np.ndarray, c1: float = 1e-4, c2: float = 9e-4) -> float:
    """Global SSIM of two equally shaped float arrays (one window: the whole image)."""
    mu_a, mu_b = a.mean(), b.mean()
    cov = ((a - mu_a) * (b - mu_b)).mean()
    return float(
        ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (a.var() + b.var() + c2))
    )


def edge_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structure similarity of two images: SSIM of their edge maps (colour changes barely move it)."""
    return ssim(edges(a), edges(b))


def temporal_smoothness(frames: np.ndarray) -> dict[str, float]:
    """Mean absolute change between consecutive frames (0-255 scale), its worst step and their ratio."""
    frames = np.asarray(frames, dtype=np.float64)
    steps = np.abs(np.diff(frames, axis=0)).mean(axis=tuple(range(1, frames.ndim)))
    mean = float(steps.mean()) if len(steps) else 0.0
    worst = float(steps.max()) if len(steps) else 0.0
    return {"mean_step": mean, "worst_step": worst, "worst_over_mean": worst / mean if mean else 0.0}


EMPTY_STD = 0.02  # a frame whose luminance varies less than this (of full scale) shows nothing


def near_empty(frames: np.ndarray) -> np.ndarray:
    """Per frame of (F, H, W[, 3]) uint8 frames: whether it is near-empty (one flat tone: black, white
    or a uniform wash, with no structure left)."""
    return np.array([_gray(frame).std() < EMPTY_STD for frame in frames], dtype=bool)


def basic_scores(frames: np.ndarray, source: np.ndarray) -> dict[str, float]:
    """Scores of a video that need no model: (F, H, W, 3) uint8 frames, the first one the source frame,
    against the (H, W, 3) source image.

    structure / structure_last: edge SSIM of the frames after the first (their mean, the last one's)
    against the source; mean_step, worst_step, worst_over_mean: temporal smoothness over all frames;
    empty_frames: the share of near-empty frames.
    """
    frames = np.asarray(frames)
    structure = [edge_ssim(frame, source) for frame in frames[1:]] or [edge_ssim(frames[0], source)]
    return {
        "structure": float(np.mean(structure)),
        "structure_last": float(structure[-1]),
        **temporal_smoothness(frames),
        "empty_frames": float(near_empty(frames).mean()),
    }
