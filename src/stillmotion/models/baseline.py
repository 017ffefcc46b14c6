"""The seed paper's building block: diffusers' pix2pix-zero pipeline, built on our loaded components.

Used as the reference our method is checked against (tests/test_reference.py) and as the baseline
it is timed against (benchmarks/method.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from diffusers import DDIMInverseScheduler, DDIMScheduler
from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_pix2pix_zero import (
    StableDiffusionPix2PixZeroPipeline,
)

from .loading import StableDiffusion


@contextmanager
def pix2pix_zero_pipeline(sd: StableDiffusion) -> Iterator[StableDiffusionPix2PixZeroPipeline]:
    """The pipeline on `sd`'s components; the UNet's attention processors are restored on exit
    (the pipeline replaces them for good and turns on gradients of the attn2 layers)."""
    original = dict(sd.unet.attn_processors)
    pipe = StableDiffusionPix2PixZeroPipeline(
        vae=sd.vae,
        text_encoder=sd.text_encoder,
        tokenizer=sd.tokenizer,
        unet=sd.unet,
        scheduler=DDIMScheduler.from_config(sd.scheduler_config),
        feature_extractor=None,
        safety_checker=None,
        inverse_scheduler=DDIMInverseScheduler.from_config(sd.scheduler_config),
        caption_generator=None,
        caption_processor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    try:
        yield pipe
    finally:
        sd.unet.set_attn_processor(original)
        sd.unet.requires_grad_(False)
