"""One model stage per physical device across processes, workers and deployments: GPU slots.

A device's slot is a Prefect global concurrency limit of 1 named after the machine and the device
(`stillmotion-gpu:HOST:cuda:0`, `stillmotion-gpu:HOST:cpu`: the CPU counts as one device), made by
`stillmotion gpu-slots`. A model stage holds its device's slot (`concurrency(..., strict=True)`) while
it computes, on top of the per-process device lock, so no two stages from any run share a device.

STILLMOTION_GPU_SLOTS says when (`stillmotion run/serve --gpu-slots` sets it):
- auto (the default): on a real Prefect server (PREFECT_API_URL set), when the device's limit exists
  there (looked up once per process and device); an embedded server never pays for a lookup;
- on: always; a device without its limit is an error that names the command to run;
- off: never.
STILLMOTION_SLOT_LOG=PATH appends one JSON line per hold (device, slot, pid, enter, exit): what the
tests read to check that no two holders overlapped.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from contextlib import contextmanager

SLOTS_ENV, SLOT_LOG_ENV = "STILLMOTION_GPU_SLOTS", "STILLMOTION_SLOT_LOG"
MODES = ("auto", "on", "off")
PREFIX = "stillmotion-gpu"
LEASE_S = 300  # Prefect renews a held slot's lease while the stage runs; a dead holder's expires


class GpuSlotMissing(RuntimeError):
    """GPU slots are on but the Prefect server has no limit for this device."""


def slot_mode() -> str:
    mode = os.environ.get(SLOTS_ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise GpuSlotMissing(f"{SLOTS_ENV} must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def physical_device(device: str) -> str:
    """The device as this machine knows it: `cuda:N` by its index among all GPUs (through
    CUDA_VISIBLE_DEVICES, whose entry may be a GPU UUID), `cpu` or `mps`."""
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return kind
    if not index:
        import torch

        index = str(torch.cuda.current_device())
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    if os.environ.get("CUDA_VISIBLE_DEVICES") and int(index) < len(visible):
        index = visible[int(index)]
    return f"cuda:{index}"


def slot_name(device: str, host: str | None = None) -> str:
    """The limit's name for a device of this machine (or of `host`); `device` as torch names it."""
    host = (host or socket.gethostname()).replace("/", "-")  # "/" is not allowed in Prefect names
    return f"{PREFIX}:{host}:{physical_device(device)}"


def missing_message(name: str) -> str:
    return (
        f"no GPU slot {name!r} on the Prefect server: run `stillmotion gpu-slots` on this machine "
        f"(with the same PREFECT_API_URL), or set {SLOTS_ENV}=off"
    )


_SEEN: dict[str, tuple[bool, float]] = {}  # auto mode: slot name -> (limit found, when looked up)
_SEEN_TTL_S = 300.0  # looked up again this often, so a limit made (or deleted) meanwhile is seen
_GUARD = threading.Lock()


def _real_server() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def limit_exists(name: str) -> bool:
    """Whether the Prefect server has an active limit of that name."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return bool(client.read_global_concurrency_limit_by_name(name).active)
        except ObjectNotFound:
            return False


def ensure_slot(name: str) -> str:
    """Make the limit `name` exist, active, at 1 (what `stillmotion gpu-slots` does per device); says
    what it did: created, updated or unchanged."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            return "created"
        if limit.limit == 1 and limit.active:
            return "unchanged"
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))
        return "updated"


def slot_for(device: str) -> str | None:
    """The slot a model stage on `device` must hold, or None (slots off, or auto and none exists)."""
    mode = slot_mode()
    if mode == "off" or (mode == "auto" and not _real_server()):
        return None
    name = slot_name(device)
    if mode == "on":
        return name
    with _GUARD:
        found, when = _SEEN.get(name, (False, -_SEEN_TTL_S))
    if time.monotonic() - when >= _SEEN_TTL_S:
        found = limit_exists(name)
        with _GUARD:
            _SEEN[name] = (found, time.monotonic())
    return name if found else None


def check_slot(device: str) -> None:
    """Before a run starts: with slots on, this device's limit must exist (one error for the run, not
    one failed row per stage)."""
    if slot_mode() == "on" and not limit_exists(name := slot_name(device)):
        raise GpuSlotMissing(missing_message(name))


_HELD = threading.local()  # whether this thread holds a slot (a nested device lock takes none)


@contextmanager
def hold_slot(device: str):
    """Hold the device's GPU slot (if slots apply) for the body; logs the hold under STILLMOTION_SLOT_LOG."""
    if getattr(_HELD, "name", None) is not None:  # nested: the outer hold covers it
        yield
        return
    name = slot_for(device)
    with contextlib.ExitStack() as stack:
        if name is not None:
            from prefect.concurrency.sync import concurrency

            try:
                stack.enter_context(concurrency(name, occupy=1, lease_duration=LEASE_S, strict=True))
            except Exception as error:
                if type(error).__name__ == "ConcurrencySlotAcquisitionError":  # the limit does not exist
                    raise GpuSlotMissing(missing_message(name)) from None
                raise
            _HELD.name = name
            stack.callback(setattr, _HELD, "name", None)
        with _logged(device, name):
            yield


@contextmanager
def _logged(device: str, name: str | None):
    path = os.environ.get(SLOT_LOG_ENV)
    if not path:
        yield
        return
    enter = time.time()
    try:
        yield
    finally:
        line = {"device": device, "slot": name, "pid": os.getpid(), "enter": enter, "exit": time.time()}
        with open(path, "a", encoding="utf-8") as log:  # one short append: whole lines across processes
            log.write(json.dumps(line) + "\n")
