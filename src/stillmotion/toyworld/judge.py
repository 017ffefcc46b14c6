"""The toy world's judge: colour, shape and mask of a generated image, by rules calibrated on truth.

No learned weights: the foreground is every pixel clearly brighter than the black background,
its colour is the nearest named hue of its mean, its shape follows from how much of its bounding
box it fills (square ~1.0, circle ~0.79, triangle ~0.5). `tests/test_toyworld.py` checks the
judge against the ground truth of drawn images.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from .world import nearest_colour

FOREGROUND = 0.25  # max channel above this (of 1.0) is foreground


@dataclass(frozen=True)
class Verdict:
    colour: str | None  # None: no foreground found
    shape: str | None
    hue: float | None
    mask: np.ndarray  # (H, W) bool


def foreground(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64).max(axis=-1) / 255 > FOREGROUND


def judge(image: np.ndarray) -> Verdict:
    """Colour and shape of the (H, W, 3) uint8 image's foreground."""
    mask = foreground(image)
    if mask.sum() < 4:
        return Verdict(None, None, None, mask)
    mean = image[mask].astype(np.float64).mean(axis=0) / 255
    hue = colorsys.rgb_to_hsv(*mean)[0] * 360
    colour = nearest_colour(hue)
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = mask.sum() / box
    shape = "square" if fill > 0.9 else "circle" if fill > 0.66 else "triangle"
    return Verdict(colour, shape, hue, mask)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def centroid(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else None
