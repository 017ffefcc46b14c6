"""Loading Stable Diffusion and BLIP from a hub id or a local folder (safetensors only).

    sd = load_stable_diffusion("CompVis/stable-diffusion-v1-4", device="auto", dtype="auto")
    captioner = load_captioner(sd.path, device=sd.device)

Hub ids resolve to a local snapshot first (so `HF_HUB_OFFLINE=1` fails at once with a clear
message when the weights are not cached); everything then loads from that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DeviceNotAvailable, ModelNotAvailable  # noqa: F401 - also imported from here
from .params import ModelDefaults

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"

_WEIGHT_IGNORE = ["*.bin", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.pb", "*fp16*", "*non_ema*", "*.md"]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_model() -> str:
    return os.environ.get("STILLMOTION_MODEL", DEFAULT_MODEL)


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


LOCAL_REVISION_PREFIX = "local-"  # the revision of a local folder: this prefix + a content fingerprint


def resolve_model(model: str, revision: str | None = None) -> tuple[Path, str]:
    """A model id or folder to (local folder, revision): the hub commit, or a content fingerprint.

    With `revision`, the result must be that revision: a hub id is fetched at that commit, and a
    folder whose files no longer match it raises ModelNotAvailable rather than load other weights.
    """
    if Path(model).expanduser().is_dir():
        path = Path(model).expanduser().resolve()
        found = LOCAL_REVISION_PREFIX + fingerprint_folder(path)
        if revision is not None and found != revision:
            raise ModelNotAvailable(
                f"model folder {path} has changed: its files are now {found}, the run keyed {revision}"
            )
        return path, found
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(model, revision=revision, ignore_patterns=_WEIGHT_IGNORE))
    except Exception as error:  # noqa: BLE001 - the hub raises many kinds; all mean "not available"
        at = f" at revision {revision}" if revision else ""
        raise ModelNotAvailable(
            f"model {model!r}{at} is not a local folder and could not be fetched from the Hugging Face Hub "
            f"({type(error).__name__}). Offline, pass --model with a local folder "
            f"(`stillmotion make-tiny-model DIR` writes a tiny one)."
        ) from None
    return path, path.name  # the snapshot folder is named by its commit hash


_FINGERPRINTS: dict[tuple, str] = {}


def fingerprint_folder(path: Path) -> str:
    """A short hash of a model folder's config and weight files (contents, not paths or times)."""
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in {".json", ".txt", ".safetensors"}
    )
    memo = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if memo not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for file in files:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):  # noqa: B023
                    digest.update(block)
        _FINGERPRINTS[memo] = digest.hexdigest()[:16]
    return _FINGERPRINTS[memo]


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a model in cache keys and metadata, read from its configs (no weights loaded)."""

    model_id: str
    revision: str
    path: str
    image_size: int  # pixels: unet sample_size x VAE scale factor
    defaults: ModelDefaults = ModelDefaults()  # the method values that travel with the model


def inspect_model(model: str | None = None) -> ModelInfo:
    """Resolve a model id or folder and read its size from the configs; loads no weights."""
    model = model or default_model()
    path, revision = resolve_model(model)
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
    except FileNotFoundError as error:
        raise ModelNotAvailable(f"model folder {path} is not a Stable Diffusion model: {error}") from None
    try:
        defaults = ModelDefaults.of_folder(path)
    except ValueError as error:
        raise ModelNotAvailable(str(error)) from None
    size = unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)
    return ModelInfo(model, revision, str(path), size, defaults)


def captioner_identity(sd_path: Path | str | None) -> tuple[str, Path, str]:
    """(id, local folder, revision) of the captioner that goes with a model folder."""
    local = Path(sd_path) / "captioner" if sd_path is not None else None
    model_id = str(local) if local is not None and local.is_dir() else DEFAULT_CAPTIONER
    path, revision = resolve_model(model_id)
    return model_id, path, revision


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
