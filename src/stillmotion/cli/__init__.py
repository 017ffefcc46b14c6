"""The `stillmotion` command: generate, run, merge, serve, gpu-slots, validate, make-tiny-model, train-toy
(DESIGN section 3).

Exit statuses: 0 success; 1 the command could not do its job; 2 usage error; `run` exits 3
when it finished but some rows failed. Errors a user can fix print one line, no traceback.
`parser.py` holds the arguments, `commands.py` what each command does.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .commands import (
    _quiet_libraries,
    cmd_generate,
    cmd_gpu_slots,
    cmd_make_tiny_model,
    cmd_merge,
    cmd_run,
    cmd_serve,
    cmd_train_toy,
    cmd_validate,
)
from .parser import EXIT_FAILED, EXIT_USAGE, UsageError, build_parser

COMMANDS = {
    "generate": cmd_generate,
    "run": cmd_run,
    "serve": cmd_serve,
    "gpu-slots": cmd_gpu_slots,
    "validate": cmd_validate,
    "merge": cmd_merge,
    "make-tiny-model": cmd_make_tiny_model,
    "train-toy": cmd_train_toy,
}


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user can fix this": one line, no traceback."""
    from ..flows.tracking import RunError
    from ..manifests import ManifestError
    from ..models import DeviceNotAvailable, ImageError, ModelNotAvailable
    from ..slots import GpuSlotMissing
    from ..storage import OutputError
    from ..video import EncodeError
    from .signals import ServerStartError

    return (
        ImageError,
        ModelNotAvailable,
        DeviceNotAvailable,
        OutputError,
        EncodeError,
        ManifestError,
        RunError,
        GpuSlotMissing,
        ServerStartError,
        FileNotFoundError,
        PermissionError,
    )


def process_started() -> float:
    """When this process started, as a time.monotonic() value (Linux: from /proc; elsewhere: now)."""
    try:
        # /proc/self/stat: field 22 (starttime, clock ticks after boot), counted after "pid (comm)"
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic()
    return time.monotonic() - min(max(age, 0.0), 3600.0)


def main(argv: list[str] | None = None) -> int:
    # the `stillmotion` command counts its wall time from its process's start (interpreter and imports
    # included); called from Python (argv given, as the tests do), from here
    started = process_started() if argv is None else time.monotonic()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = started
    try:
        # validate and gpu-slots load no model; run only once some row needs work
        if args.command not in ("validate", "gpu-slots", "run"):
            _quiet_libraries()  # imports torch and the model libraries: seconds in which Ctrl-C may come
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(f"stillmotion {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        from .signals import interrupted_status

        print("stillmotion: interrupted", file=sys.stderr)
        return interrupted_status()  # 130 for Ctrl-C; 143 when `run` was stopped by SIGTERM
    except user_errors() as error:
        print(f"stillmotion {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
