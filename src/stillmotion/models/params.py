"""Method parameters: one frozen dataclass, defaults in one place (pix2pix-zero's where it has them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Curve = Literal["log", "linear"]

DEFAULT_XA_GUIDANCE_REAL = 0.1
DEFAULT_XA_GUIDANCE_SYNTHETIC = 0.15


@dataclass(frozen=True)
class MethodParams:
    """Everything that changes the numbers of one video (besides the image, prompts and model)."""

    keyframes: int = 6  # key frames per segment (K)
    frames: int | None = None  # output frames per segment (N); None means 4 * keyframes
    fps: int = 8  # frames per second of the MP4
    seed: int = 0  # seeds x_T (synthetic), the VAE sample and the regularizer's roll offsets
    steps: int = 50  # DDIM steps for inversion, reference and key frames
    cfg_scale: float = 5.0  # classifier-free guidance scale of reference and key frames; 1: CFG off
    xa_guidance: float | None = None  # cross-attention guidance step; None: 0.1 real, 0.15 synthetic
    curve: Curve = "log"  # edit-weight curve: ln(1 + k(e-1)/K) or k/K
    # regularized inversion (pix2pix-zero's defaults)
    reg_steps: int = 5  # outer regularization iterations per inversion step
    auto_corr_rolls: int = 5  # auto-correlation pyramid steps per outer iteration
    lambda_auto_corr: float = 20.0  # weight of the auto-correlation gradient
    lambda_kl: float = 20.0  # weight of the KL-to-N(0,1) gradient
    encode: Literal["mean", "sample"] = "mean"  # VAE encode: latent mean or a seeded sample
    batch_size: int = 8  # key frames per UNet batch (memory knob; does not change results)

    def __post_init__(self) -> None:
        if self.keyframes < 1:
            raise ValueError(f"keyframes must be >= 1, got {self.keyframes}")
        if self.frames is not None and self.frames < self.keyframes:
            raise ValueError(f"frames ({self.frames}) must be >= keyframes ({self.keyframes})")
        if not 1 <= self.fps <= 120:
            raise ValueError(f"fps must be in 1..120, got {self.fps}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.xa_guidance is not None and not (self.xa_guidance >= 0 and self.xa_guidance != float("inf")):
            raise ValueError(f"xa_guidance must be finite and >= 0, got {self.xa_guidance}")
        if self.curve not in ("log", "linear"):
            raise ValueError(f"curve must be 'log' or 'linear', got {self.curve!r}")
        if not (1 <= self.cfg_scale < float("inf")):
            raise ValueError(
                f"cfg_scale must be a finite number >= 1 (1 turns classifier-free guidance off, "
                f"as in pix2pix-zero), got {self.cfg_scale}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def frames_per_segment(self) -> int:
        return self.frames if self.frames is not None else 4 * self.keyframes

    def guidance_for(self, synthetic: bool) -> float:
        """The cross-attention guidance step: the user's, else pix2pix-zero's default for the mode."""
        if self.xa_guidance is not None:
            return self.xa_guidance
        return DEFAULT_XA_GUIDANCE_SYNTHETIC if synthetic else DEFAULT_XA_GUIDANCE_REAL

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
