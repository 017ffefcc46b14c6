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
