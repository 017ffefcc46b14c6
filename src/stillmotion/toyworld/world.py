"""A procedural toy world: one anti-aliased coloured shape on black, with its caption and ground truth.

    images, truths = draw_batch(64, np.random.default_rng(0))      # (64, 32, 32, 3) uint8
    truths[0].caption                                              # "a big red circle"

Hue and size are continuous (jittered around the named colours, uniform on the whole hue circle
with `hues="full"`, or half and half with `hues="mixed"`; sizes in a range) so that edits and frames
can move smoothly; captions name the nearest colour and a size class (`hues="named"`: the colour only
when the hue is within NAMED_DEGREES of it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": 0.0, "yellow": 60.0, "green": 120.0, "blue": 230.0}  # hue in degrees
SIZE = 32  # image side in pixels
SUPERSAMPLE = 4  # anti-aliasing: draw at 4x, average down


@dataclass(frozen=True)
class Truth:
    """The ground truth of one toy image."""

    shape: str
    colour: str
    hue: float  # degrees, continuous
    radius: float  # half the shape's extent, pixels
    center: tuple[float, float]  # (x, y), pixels
    big: bool
    named: bool = True  # the caption names the colour (hues="named" leaves it out between the colours)
    sized: bool = True  # the caption names the size (train-toy --unsized leaves it out of some)

    @property
    def caption(self) -> str:
        size = f"{'big' if self.big else 'small'} " if self.sized else ""
        colour = f"{self.colour} " if self.named else ""
        return f"a {size}{colour}{self.shape}"


def hue_to_rgb(hue: float, saturation: float = 1.0, value: float = 1.0) -> np.ndarray:
    """HSV (hue in degrees) to RGB in [0, 1]."""
    h = (hue % 360) / 60
    c = value * saturation
    x = c * (1 - abs(h % 2 - 1))
    table = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)]
    return np.array(table[int(h) % 6]) + (value - c)


def shape_mask(shape: str, center: tuple[float, float], radius: float, size: int = SIZE) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape, (size, size)."""
    n = size * SUPERSAMPLE
    ys, xs = (np.mgrid[0:n, 0:n] + 0.5) / SUPERSAMPLE  # pixel-space sample positions
    dx, dy = xs - center[0], ys - center[1]
    if shape == "circle":
        inside = dx**2 + dy**2 <= radius**2
    elif shape == "square":
        side = radius * 0.886  # same area as the circle of this radius
        inside = (np.abs(dx) <= side) & (np.abs(dy) <= side)
    elif shape == "triangle":  # upward equilateral triangle inscribed in the circle
        top, base = -radius, radius / 2
        inside = (dy >= top) & (dy <= base) & (np.abs(dx) <= (dy - top) / np.sqrt(3))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


HUES = ("near", "full", "mixed", "named")  # how training images draw their hue (train-toy --hues)
NAMED_DEGREES = 20.0  # hues="named": a caption names its colour within this many degrees of its hue


def colour_cell(colour: str) -> tuple[float, float]:
    """The arc of hues (start, end in degrees, end > start, may pass 360) nearer to `colour` than to any
    other named colour."""
    order = sorted(COLOURS, key=COLOURS.get)
    i = order.index(colour)
    before, after = COLOURS[order[i - 1]], COLOURS[order[(i + 1) % len(order)]]
    hue = COLOURS[colour]
    return hue - ((hue - before) % 360) / 2, hue + ((after - hue) % 360) / 2


def sample_truth(
    rng: np.random.Generator,
    shape: str | None = None,
    colour: str | None = None,
    hues: str = "near",
    unsized: float = 0.0,
    small: float = 0.5,
) -> Truth:
    """One random truth. `hues="near"`: the hue within 12 degrees of the named colour; `"full"`: uniform
    on the colour's whole cell of the hue circle (every hue nearer to it than to another named colour), so
    a model trained on it has seen every hue between two named ones, each colour as often; `"mixed"`:
    half of the images "near", half "full", so every hue is seen but a colour's word means its own hue
    most of all (a "full" model's "blue" is anything from cyan to violet alike); `"named"`: half of the
    images within NAMED_DEGREES of the named colour, half uniform on the whole circle, and a caption names
    the colour only within NAMED_DEGREES of its hue ("a big square" between two colours), so every hue is
    seen and a colour word means its own hue alone. `unsized`: the share of captions without a size word
    ("a red square" of any size); 0 draws nothing more, so the other values give the truths they gave.
    `small`: the share of small shapes (0.5 draws the size class as before)."""
    if hues not in HUES:
        raise ValueError(f"hues must be one of {HUES}, not {hues!r}")
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    asked, colour = colour, colour or list(COLOURS)[rng.integers(len(COLOURS))]
    named = True
    if hues == "named":
        if asked or rng.integers(2):  # a colour asked for is drawn near its own hue
            hue = (COLOURS[colour] + rng.uniform(-NAMED_DEGREES, NAMED_DEGREES)) % 360
        else:
            hue = rng.uniform(0, 360)
            colour = nearest_colour(hue)
            named = hue_apart(hue, COLOURS[colour]) <= NAMED_DEGREES
    elif hues == "mixed":
        hues = "near" if rng.integers(2) else "full"
    if hues == "near":
        hue = COLOURS[colour] + rng.uniform(-12, 12)
    elif hues != "named":
        hue = rng.uniform(*colour_cell(colour)) % 360
    big = bool(rng.integers(2)) if small == 0.5 else bool(rng.random() >= small)
    radius = rng.uniform(9, 12) if big else rng.uniform(5, 7.5)
    margin = radius + 1
    center = (rng.uniform(margin, SIZE - margin), rng.uniform(margin, SIZE - margin))
    sized = not unsized or bool(rng.random() >= unsized)
    return Truth(shape, colour, hue, radius, center, big, named, sized)


def hue_apart(a: float, b: float) -> float:
    """Degrees between two hues on the circle, in [0, 180]."""
    return float(min((a - b) % 360, (b - a) % 360))


def nearest_colour(hue: float) -> str:
    """The named colour whose hue is nearest."""
    return min(COLOURS, key=lambda colour: hue_apart(hue, COLOURS[colour]))


def render(truth: Truth) -> np.ndarray:
    """The (SIZE, SIZE, 3) uint8 image of a truth: its shape in its hue on black."""
    coverage = shape_mask(truth.shape, truth.center, truth.radius)[..., None]
    return np.round(coverage * hue_to_rgb(truth.hue) * 255).astype(np.uint8)


def draw_batch(
    n: int, rng: np.random.Generator, hues: str = "near", unsized: float = 0.0, small: float = 0.5
) -> tuple[np.ndarray, list[Truth]]:
    truths = [sample_truth(rng, hues=hues, unsized=unsized, small=small) for _ in range(n)]
    return np.stack([render(t) for t in truths]), truths


def vocabulary() -> list[str]:
    """Every word a toy caption or prompt uses."""
    return ["a", "big", "small", *COLOURS, *SHAPES]


def colour_templates() -> list[str]:
    """Toy sentences with a colour slot ("a big {} circle", ...: every size word or none, every shape), for
    pix2pix-zero's sentence-mean edit directions between two colours (MethodParams.direction_templates)."""
    return [f"a {size}{{}} {shape}" for size in ("", "big ", "small ") for shape in SHAPES]
