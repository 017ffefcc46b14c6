"""Stopping `stillmotion run` within seconds on SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop).

Three things stood in the way (issue 12, item 7); one helper each:

- `Interrupts`: SIGINT and SIGTERM both raise KeyboardInterrupt in the main thread, and the signal is
  remembered, so the exit status is 130 or 143. A second signal while stopping exits at once.
- `start_detached_server`: with no PREFECT_API_URL, Prefect starts an embedded server as a child process
  in the CLI's process group, so a terminal's Ctrl-C (sent to the whole foreground group) killed it
  first and every later API call of the engine retried for minutes. We start that same server (Prefect's
  `SubprocessASGIServer`, the instance Prefect then reuses) in a session of its own, tied to this
  process by PR_SET_PDEATHSIG so that it never outlives it, even after a SIGKILL; `stop_server` stops it.
- `interruptible_runner`: Prefect's thread runner waits, on the way out of an interrupted flow, for every
  model stage already running in its threads (minutes on a real model); this one (InterruptibleThreadPool)
  does not, so the batch flow can write results.parquet at once. The stages left running are abandoned
  by the caller's `exit_now` (os._exit).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, NoReturn

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: int | None = None  # the signal that interrupted this process, for `interrupted_status`


def interrupted_status() -> int:
    """The exit status for an interrupted command: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (_received or signal.SIGINT)


class Interrupts:
    """While installed, SIGINT and SIGTERM raise KeyboardInterrupt in the main thread; `signum` says
    which came first. Prefect swaps in its own SIGTERM handler while a flow runs (it raises
    `TerminationSignal` there) and puts this one back, and re-sends the signal to it, on the way out."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> Interrupts:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # a second signal while stopping: stop now, as a shell user expects
            name = signal.Signals(signum).name
            _write_stderr(f"stillmotion: {name} again: stopped at once; run again to resume\n")
            os._exit(128 + signum)
        self._record(signum)
        raise KeyboardInterrupt

    def _record(self, signum: int) -> None:
        global _received
        self.signum = _received = signum

    def note(self, error: BaseException) -> int:
        """The signal behind an interrupt `error` (SIGINT for a plain KeyboardInterrupt)."""
        if self.signum is None:
            self._record(getattr(error, "signal", None) or signal.SIGINT)  # Prefect's TerminationSignal
        return self.signum

    @property
    def exit_status(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name


def interrupt_types() -> tuple[type[BaseException], ...]:
    """What an interrupt looks like when it comes out of a flow call."""
    from prefect.exceptions import TerminationSignal

    return (KeyboardInterrupt, TerminationSignal)


def _write_stderr(text: str) -> None:
    try:
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a broken stderr must not stop the exit
        pass
    try:
        os.write(2, text.encode(errors="replace"))
    except OSError:
        pass


def exit_now(status: int, line: str | None = None) -> NoReturn:
    """Print `line` on stderr, flush, and leave without waiting for any thread (model stages still
    running in Prefect's workers, its event and log workers) or running atexit hooks."""
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    if line is not None:
        _write_stderr(line.rstrip("\n") + "\n")
    os._exit(status)


# --- the embedded Prefect server, out of the terminal's process group ---------------------------------

PR_SET_PDEATHSIG = 1


def _death_signal_setter():
    """A function for the server child, run between fork and exec: its parent's death sends it SIGTERM
    (Linux). None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the death signal was armed
            os._exit(1)

    return set_death_signal


class _SubprocessInOwnSession:
    """Stands in for the `subprocess` module inside Prefect's server module while it starts the server:
    the same command and environment as Prefect's, plus a session of its own and the death signal."""

    def __init__(self, preexec_fn) -> None:
        self._preexec_fn = preexec_fn

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 - the module's name
        kwargs.setdefault("start_new_session", True)
        if self._preexec_fn is not None:
            kwargs.setdefault("preexec_fn", self._preexec_fn)
        return subprocess.Popen(*args, **kwargs)


SERVER_START_TRIES = 3
SERVER_SETTLE_S = 0.5  # after the health check: a server that lost its port exits within this


class ServerStartError(RuntimeError):
    """The embedded Prefect server would not start: the run stops with one line (exit 1)."""


def _detached_server_class():
    from prefect.server.api import server as server_module

    class DetachedSubprocessASGIServer(server_module.SubprocessASGIServer):
        def find_available_port(self) -> int:
            # a port the OS hands out (never to two sockets at once), not a random pick from 8000-8999
            # that a second process can make at the same moment
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                return probe.getsockname()[1]

        def _run_uvicorn_command(self) -> subprocess.Popen:
            real = server_module.subprocess
            server_module.subprocess = _SubprocessInOwnSession(_death_signal_setter())
            try:
                return super()._run_uvicorn_command()
            finally:
                server_module.subprocess = real

    return server_module.SubprocessASGIServer, DetachedSubprocessASGIServer


def start_detached_server():
    """Start the embedded Prefect server now, in its own session, when no PREFECT_API_URL is set (the
    case where Prefect would start it itself, in our process group); Prefect's clients then use it.
    Returns the server (stop it with `stop_server`), or None when a server is configured or Prefect has
    one already."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    base, detached = _detached_server_class()
    if None in base._instances:  # Prefect's default instance exists already: leave it alone
        return None
    reason = ""
    for _ in range(SERVER_START_TRIES):  # a start-up error (a port taken meanwhile, a timeout) is retried
        server = detached()  # registered as Prefect's default instance (port None), which get_client reuses
        try:
            server.start()
            time.sleep(SERVER_SETTLE_S)
            if server.server_process is not None and server.server_process.poll() is None:
                return server
            # the health check was answered by another process's server on that port, and ours exited
            reason = "its process exited after start-up (its port was taken)"
        except Exception as error:  # noqa: BLE001 - Prefect's start-up timeout or an HTTP error
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        stop_server(server)  # also forgets the instance, so the next try is a new server on a new port
    raise ServerStartError(
        f"cannot start Prefect's embedded server ({SERVER_START_TRIES} tries): {reason}; "
        "set PREFECT_API_URL to use a running Prefect server"
    )


def stop_server(server, timeout: float = 5.0) -> None:
    """Stop the embedded server (SIGTERM, then SIGKILL after `timeout` s) and wait for it."""
    process = getattr(server, "server_process", None)
    try:
        if process is not None:
            process.terminate()
            process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except OSError:
        pass
    try:
        server.stop()  # forget the instance (the process is gone: returns at once)
    except Exception:  # noqa: BLE001
        pass


def stop_default_server(timeout: float = 5.0) -> None:
    """Stop the embedded server Prefect's clients use (ours, or one Prefect started), if any."""
    module = sys.modules.get("prefect.server.api.server")
    server = None if module is None else module.SubprocessASGIServer._instances.get(None)
    if server is not None:
        stop_server(server, timeout)


# --- a thread runner that does not wait for running stages once interrupted --------------------------


def _runner_class() -> type:
    """InterruptibleThreadPool, defined on first use: Prefect takes ~2 s to import, and `main` imports
    this module for every interrupted command."""
    runner = globals().get("_RUNNER")
    if runner is not None:
        return runner
    from prefect.task_runners import ThreadPoolTaskRunner

    class InterruptibleThreadPool(ThreadPoolTaskRunner):
        """Prefect's ThreadPoolTaskRunner, except that leaving it because of an interrupt
        (KeyboardInterrupt, TerminationSignal) cancels the queued stages and does not wait for the
        running ones."""

        def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
            if exc_type is not None and not issubclass(exc_type, Exception) and self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None  # the base class then only sets the tasks' cancel events
            super().__exit__(exc_type, exc_value, traceback)

    # pickled by reference, as stillmotion.cli.signals.InterruptibleThreadPool (see __getattr__ below)
    InterruptibleThreadPool.__module__ = __name__
    InterruptibleThreadPool.__qualname__ = "InterruptibleThreadPool"
    globals()["_RUNNER"] = InterruptibleThreadPool
    return InterruptibleThreadPool


def __getattr__(name: str) -> Any:
    if name == "InterruptibleThreadPool":
        return _runner_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def interruptible_runner(runner):
    """The same thread runner as `runner` (a flow's configured ThreadPoolTaskRunner), as an
    InterruptibleThreadPool; any other runner unchanged."""
    from prefect.task_runners import ThreadPoolTaskRunner

    if type(runner) is not ThreadPoolTaskRunner:
        return runner
    return _runner_class()(max_workers=runner._max_workers)
