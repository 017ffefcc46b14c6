"""Per-process state of the workers: one loaded model per device, one lock per device.

Model work is serialized per device (the CPU counts as one), so the attention processors a UNet
carries are never shared between concurrent calls; I/O-bound stages run outside the lock. Across
processes and machines, a device's GPU slot (a Prefect global concurrency limit, stillmotion/slots.py) does
the same.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from ..models import (
    Captioner,
    StableDiffusion,
    load_captioner,
    load_stable_diffusion,
    resolve_device,
    resolve_dtype,
)
from ..models.loading import LOCAL_REVISION_PREFIX, resolve_model
from ..models.scoring import Scorers, find_scorers, load_scorers
from ..requests import VideoRequest
from ..slots import check_slot, hold_slot

_GUARD = threading.Lock()
_DEVICE_LOCKS: dict[str, threading.RLock] = {}
_MODELS: dict[tuple, StableDiffusion] = {}
_CAPTIONERS: dict[tuple, Captioner] = {}
_SCORERS: dict[tuple, Scorers] = {}

# How many times each stage really computed in this process (not served from cache).
COMPUTED: Counter[str] = Counter()

# Who hears the stages' denoising steps in this context: (stage, steps done, steps in all); `generate`
# shows them as progress bars, the batch flow (which reports rows, not steps) sets none
Progress = Callable[[str, int, int], None]
_PROGRESS: ContextVar[Progress | None] = ContextVar("stillmotion_progress", default=None)


@contextmanager
def reporting(progress: Progress | None):
    """Within the block, the stages report their steps to `progress`."""
    token = _PROGRESS.set(progress)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def stage_progress(stage: str) -> Callable[[int, int], None] | None:
    """A stage's step callback (done, total) to whoever listens in this context; None when nobody does."""
    progress = _PROGRESS.get()
    return None if progress is None else lambda done, total: progress(stage, done, total)


@dataclass(frozen=True)
class Job:
    """Everything a row's tasks need besides upstream results: JSON-able, no secrets, no tensors."""

    video_id: str
    request: VideoRequest
    output_url: str
    cache_url: str  # artifacts live under {cache_url}/artifacts
    model: str  # as given: hub id or folder (shown in metadata)
    model_path: str  # resolved absolute local folder
    revision: str  # hub commit, or "local-" + the folder's content fingerprint
    size: int  # model image size in pixels
    device: str = "auto"
    dtype: str = "auto"
    force: bool = False
    channels_last: bool = False  # execution options: they change speed, not results (not in keys)
    compile_unet: str | None = None
    batch_size: int | None = None  # the run's cap on key frames per UNet batch (memory, not results)
    param_sources: dict | None = None  # where the model-specific method values came from (metadata)
    scorers: dict | None = None  # the scoring models found for the run: {name: [id, folder, revision]}
    fingerprint: str | None = None  # what the video is made from (stillmotion.fingerprints), in its metadata
    changed: bool = False  # the row's video existed, made from something else: it is made again

    @classmethod
    def on_model(cls, info, **fields) -> Job:
        """A Job on the model a models.identity.ModelInfo describes (its id, folder, revision, size)."""
        return cls(
            model=info.model_id, model_path=info.path, revision=info.revision, size=info.image_size, **fields
        )

    @property
    def hub_model(self) -> bool:
        return not self.revision.startswith(LOCAL_REVISION_PREFIX)

    @property
    def model_source(self) -> str:
        """What a worker loads: the hub id (fetched at `revision`), or the folder by its absolute path."""
        return self.model if self.hub_model else self.model_path

    @property
    def model_key(self) -> dict:
        """The weights in cache keys: the revision (and hub id), never how a folder was spelled."""
        return {"model": self.model if self.hub_model else None, "revision": self.revision, "size": self.size}


def compute_identity(job: Job) -> dict:
    """Where this process computes a job's model stages: the device type and dtype they run in.

    Part of the model stages' keys (fp32 on a CPU and bf16 on a GPU give other numbers) and of their
    records, so metadata reports what each artifact was really computed with. Device indices do not
    change numbers and stay out.
    """
    device = torch.device(_device_name(job.device))
    return {"device": device.type, "dtype": str(resolve_dtype(job.dtype, device)).removeprefix("torch.")}


def _device_name(device: str) -> str:
    """`auto` on a Dask worker of a multi-GPU box takes GPU (worker number mod GPU count)."""
    if device == "auto" and torch.cuda.device_count() > 1:
        worker = _dask_worker_name()
        if isinstance(worker, int):
            return f"cuda:{worker % torch.cuda.device_count()}"
    return str(resolve_device(device))


def _dask_worker_name():
    try:
        from distributed import get_worker

        return get_worker().name
    except (ImportError, ValueError):  # not inside a Dask worker
        return None


def worker_label() -> str:
    """host:pid of this process, recorded with each stage's timing."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def device_lock(device: str):
    """Hold the device for model work: one stage at a time per device in this process and, with GPU
    slots (stillmotion/slots.py), in every process of every run that uses the same Prefect server."""
    name = _device_name(device)
    with _GUARD:
        lock = _DEVICE_LOCKS.setdefault(name, threading.RLock())
    with lock, hold_slot(name):  # the process's lock first: one thread per device waits on the server
        yield


def check_gpu_slot(device: str) -> None:
    """Fail before any row when GPU slots are on and this device has none (stillmotion/slots.py)."""
    check_slot(_device_name(device))


def stable_diffusion(job: Job) -> StableDiffusion:
    """The process's loaded model for this job's device and dtype (loaded on first use)."""
    key = (
        job.model_path,
        job.revision,
        _device_name(job.device),
        job.dtype,
        job.channels_last,
        job.compile_unet,
    )
    with _GUARD:
        if key not in _MODELS:
            _MODELS[key] = load_stable_diffusion(
                job.model_source,
                revision=job.revision,
                device=key[2],
                dtype=job.dtype,
                channels_last=job.channels_last,
                compile_unet=job.compile_unet,
            )
        return _MODELS[key]


def captioner(job: Job) -> Captioner:
    key = (job.model_path, _device_name(job.device))
    with _GUARD:
        if key not in _CAPTIONERS:
            _CAPTIONERS[key] = load_captioner(job.model_path, device=key[1])
        return _CAPTIONERS[key]


def scorers(job: Job) -> Scorers:
    """The process's loaded scoring models for this job's device (loaded on first use)."""
    found = {name: tuple(value) for name, value in (job.scorers or {}).items()}
    key = (tuple(sorted(found.items())), _device_name(job.device))
    with _GUARD:
        if key not in _SCORERS:
            # a folder found by the flow's process, else (another machine's worker) the id at its revision
            local = {
                name: (model_id, path if os.path.isdir(path) else str(resolve_model(model_id, revision)[0]))
                for name, (model_id, path, revision) in found.items()
            }
            _SCORERS[key] = load_scorers(local, device=key[1])
        return _SCORERS[key]


def run_scorers(model_path: str) -> dict:
    """The scoring models that go with the model ({name: [id, folder, revision]}, a Job's `scorers`);
    the missing ones are said once on stderr (not through Prefect's logger, which a run keeps quiet),
    and their scores left out."""
    found, missing = find_scorers(model_path)
    if missing:
        reasons = "; ".join(f"{name.upper()}: {reason}" for name, reason in missing.items())
        sys.stderr.write(f"stillmotion: scores without a scoring model for {reasons}\n")
    return {name: list(value) for name, value in found.items()}


def loaded_models() -> int:
    """How many Stable Diffusion models this process holds."""
    return len(_MODELS)


def release_models() -> None:
    """Drop every loaded model and captioner (frees memory; the next task loads again)."""
    with _GUARD:
        _MODELS.clear()
        _CAPTIONERS.clear()
        _SCORERS.clear()
