"""Loading Stable Diffusion and BLIP from a hub id or a local folder (safetensors only).

    sd = load_stable_diffusion("CompVis/stable-diffusion-v1-4", device="auto", dtype="auto")
    captioner = load_captioner(sd.path, device=sd.device)

Hub ids resolve to a local snapshot first (so `HF_HUB_OFFLINE=1` fails at once with a clear
message when the weights are not cached); everything then loads from that folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DeviceNotAvailable, ModelNotAvailable
from .identity import (  # noqa: F401 - model identity lives in the light module; imported from here too
    DEFAULT_CAPTIONER,
    DEFAULT_MODEL,
    LOCAL_REVISION_PREFIX,
    ModelInfo,
    captioner_identity,
    default_model,
    fingerprint_folder,
    inspect_model,
    resolve_model,
)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else the CPU; `cpu`, `cuda`, `cuda:N` and `mps` must exist here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not DEVICE_PATTERN.fullmatch(device):
        raise DeviceNotAvailable(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceNotAvailable(f"device {device!r} requested but CUDA is not available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceNotAvailable(
                f"device {device!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceNotAvailable(f"device {device!r} requested but MPS is not available on this machine")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on CUDA (fp16 where bf16 is unsupported) and fp32 on the CPU."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}")
    return _DTYPES[dtype]


@dataclass
class StableDiffusion:
    """The separate components of a Stable Diffusion model, frozen, on one device in one dtype."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict  # DDIM and DDIM-inverse schedulers are built from it per call
    model_id: str
    revision: str
    path: Path
    device: torch.device
    dtype: torch.dtype

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_stable_diffusion(
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    channels_last: bool = False,
    compile_unet: str | None = None,
    revision: str | None = None,
) -> StableDiffusion:
    """Load UNet, VAE, CLIP text encoder, tokenizer and scheduler config from safetensors.

    `channels_last` and `compile_unet` (a torch.compile backend: "inductor" on GPUs) change how the
    UNet runs, not what it computes (tests/test_method.py checks the outputs agree).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model = model or default_model()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path, revision = resolve_model(model, revision)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (path / part).is_dir():
            raise ModelNotAvailable(f"model folder {path} has no {part}/ (is it a Stable Diffusion model?)")
    try:
        unet = UNet2DConditionModel.from_pretrained(
            path, subfolder="unet", use_safetensors=True, dtype=torch_dtype
        )
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", use_safetensors=True, dtype=torch_dtype)
        text_encoder = CLIPTextModel.from_pretrained(
            path, subfolder="text_encoder", use_safetensors=True, dtype=torch_dtype
        )
    except OSError as error:
        raise ModelNotAvailable(f"cannot load safetensors weights from {path}: {error}") from None
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    scheduler_config = dict(DDIMScheduler.load_config(path, subfolder="scheduler"))
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).eval().to(torch_device)
    if channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if compile_unet:
        # the whole forward, not its blocks: same-type blocks share one code object, whose graph cache
        # (one per block, mode and shape) overflowed recompile_limit. Automatic dynamic shapes make
        # the batch dimension dynamic once it changes, so a video needs one graph per attention-store
        # mode, whatever its batch sizes (tests/test_compile.py)
        unet.compile(backend=compile_unet, dynamic=None)
    return StableDiffusion(
        unet, vae, text_encoder, tokenizer, scheduler_config, model, revision, path, torch_device, torch_dtype
    )


@dataclass
class Captioner:
    """A BLIP captioning model and its processor."""

    model: torch.nn.Module
    processor: object
    model_id: str
    revision: str


def load_captioner(sd_path: Path | str | None = None, device: torch.device | str = "cpu") -> Captioner:
    """BLIP from `<model folder>/captioner/` when it exists, else the hub's blip-image-captioning-base."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model_id, path, revision = captioner_identity(sd_path)
    try:
        model = BlipForConditionalGeneration.from_pretrained(path, use_safetensors=True)
    except OSError as error:
        raise ModelNotAvailable(f"cannot load BLIP safetensors weights from {path}: {error}") from None
    processor = BlipProcessor.from_pretrained(path)
    model.requires_grad_(False).eval().to(device)
    return Captioner(model, processor, model_id, revision)
