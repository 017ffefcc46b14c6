"""What `run` checks and says before any server starts (issue 31): the errors that can stop it, each
one line naming its fix, told without importing torch where it can be; and its start-up steps on stderr.

A run's first seconds go to torch, Prefect's server and the model; each is said as it starts, and what
would fail the run (an output that is a file, a storage option s3fs refuses, a missing model, a device
this machine lacks, no captioner for image rows) fails it before any of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# imported when called: `--help`, `validate` and argument errors import this module and stay light


def unknown_storage_options(protocol: str, options: dict) -> list[str]:
    """The option names s3fs would refuse only once connected ("AioSession.__init__() got an unexpected
    keyword argument"): those of neither S3FileSystem, fsspec nor aiobotocore's session, where s3fs hands
    the rest. Other filesystems keep any option, so theirs are not checked."""
    if protocol not in ("s3", "s3a"):
        return []
    import inspect

    try:
        from aiobotocore.session import AioSession
        from fsspec.dircache import DirCache
        from s3fs import S3FileSystem
    except ImportError:  # no s3 extra: the run says it cannot use s3://
        return []
    accepted = {"skip_instance_cache"}  # fsspec's instance cache
    for function in (S3FileSystem.__init__, DirCache.__init__, AioSession.__init__):
        accepted |= set(inspect.signature(function).parameters)
    for klass in S3FileSystem.__mro__:
        if "__init__" in vars(klass):
            accepted |= set(inspect.signature(vars(klass)["__init__"]).parameters)
    return sorted(set(options) - accepted)


def check_local_folder(option: str, url: str | None) -> None:
    """An --output or --cache on local disk must be a folder (new or existing), not a file."""
    import fsspec

    from ..flows.tracking import RunError
    from ..storage import protocol_of

    if not url or protocol_of(url) != "file":
        return
    path = Path(fsspec.core.strip_protocol(url)).absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = " is a file" if folder == path else f": {folder} is a file"
                holds = (
                    "a folder per video, results.parquet and report.html"
                    if option == "--output"
                    else "artifacts"
                )
                raise RunError(
                    f"{option} {url}{where}, not a folder: name a folder (new or existing); it holds {holds}"
                )
            return


def say_new_buckets(*urls: str | None) -> None:
    """One line for each S3 bucket of these URLs that does not exist yet: the run's first write creates it."""
    import fsspec

    from ..storage import protocol_of

    seen = set()
    for url in urls:
        if not url or protocol_of(url) not in ("s3", "s3a"):
            continue
        try:
            fs, path = fsspec.core.url_to_fs(url)
            bucket = path.strip("/").split("/")[0]
            if bucket in seen:
                continue
            seen.add(bucket)
            exists = fs.exists(bucket)
        except Exception:  # noqa: BLE001 - unknown (no s3fs, no permission to look): the run's writes tell
            continue
        if not exists:
            say(f"creating the bucket s3://{bucket} (it does not exist yet)")


def say(line: str) -> None:
    """One line of what `run` is doing, on stderr: its start-up steps take seconds each."""
    print(f"stillmotion run: {line}", file=sys.stderr, flush=True)


GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")


def device_missing_without_torch(device: str) -> str | None:
    """Why a device cannot exist here, told without importing torch (seconds): MPS off macOS, CUDA on a
    Linux machine with no GPU driver's device (NVIDIA's, WSL's or ROCm's); None when only torch can tell."""
    kind = device.split(":")[0]
    if kind == "mps" and sys.platform != "darwin":
        return (
            f"device {device!r} requested but MPS is not available on this machine (Apple GPUs, macOS only)"
        )
    if kind == "cuda" and sys.platform.startswith("linux") and not any(map(os.path.exists, GPU_DEVICE_NODES)):
        return f"device {device!r} requested but CUDA is not available on this machine (no GPU driver found)"
    return None


def no_captioner(model_path: str) -> str | None:
    """Why no captioner can caption an image for this model (None when one can): the model folder has no
    captioner/ and the hub's BLIP is neither cached nor fetchable. Fetches it when it can (as the caption
    stage would); loads no weights."""
    from ..models.errors import ModelNotAvailable
    from ..models.identity import DEFAULT_CAPTIONER, captioner_identity

    if (Path(model_path) / "captioner").is_dir():
        return None
    try:
        captioner_identity(model_path)
    except ModelNotAvailable:
        from huggingface_hub import constants

        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        return (
            f"the model folder {model_path} has no captioner/ and {DEFAULT_CAPTIONER} is not in the "
            f"Hugging Face cache{offline} nor could be fetched"
        )
    return None


def check_before_start(args: argparse.Namespace) -> None:
    """What a run needs before any server starts: the model (folder or hub id), the device (only what
    needs no torch; a Dask run's workers check their own) and a captioner where rows need one."""
    from ..flows.tracking import RunError
    from ..manifests import caption_needs
    from ..models.errors import DeviceNotAvailable
    from ..models.identity import inspect_model

    info = inspect_model(args.model)
    if args.runner == "local" and (missing := device_missing_without_torch(args.device)):
        raise DeviceNotAvailable(missing)
    needing, rows = caption_needs(args.manifest, args.limit)
    if needing and (missing := no_captioner(info.path)):
        fix = "give those rows a `caption` column (`generate` takes --caption)"
        if needing == rows:
            raise RunError(f"every row is an image without a caption, and {missing}: {fix}")
        say(f"warning: {needing} image rows have no caption, and {missing}: they will fail; {fix}")


def device_line(args: argparse.Namespace) -> str:
    """The device and dtype the model will load on (this process's: the local runner), checked by torch."""
    import torch

    from ..models.loading import resolve_device, resolve_dtype

    device = resolve_device(args.device)  # DeviceNotAvailable: a GPU this machine lacks
    name = (
        f"cuda:{torch.cuda.current_device()}"
        if device.type == "cuda" and device.index is None
        else str(device)
    )
    return f"{name} ({str(resolve_dtype(args.dtype, device)).removeprefix('torch.')})"
