"""Helpers for tests that start real servers on 127.0.0.1 (a Prefect server, SeaweedFS, PostgreSQL):
free ports, processes in their own process group, waiting until a server answers."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args, env, **kwargs) -> subprocess.Popen:
    """A process in a session (and process group) of its own, so that `stop` reaches all it starts."""
    return subprocess.Popen(args, env=env, start_new_session=True, **kwargs)


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a process we started, and everything it started, by its process group id."""
    if process.poll() is None:
        os.killpg(process.pid, signum)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until(
    ready: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 120
) -> float:
    """Poll `ready()` (exceptions count as not ready) until it is true; fail if `process` exits first or
    `timeout` seconds pass. Returns the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            if ready():
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - not up yet
            pass
        assert process.poll() is None, f"{what} exited with status {process.returncode}"
        assert time.monotonic() - started < timeout, f"{what} did not answer within {timeout} s"
        time.sleep(0.2)


def healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


@contextlib.contextmanager
def prefect_server(home: Path, timeout: float = 120, **settings: str) -> Iterator[dict]:
    """`prefect server start` on a free port of 127.0.0.1 (no UI), with PREFECT_HOME `home` and `settings`
    (PREFECT_* variables) in its environment; yields the environment for its clients (PREFECT_API_URL
    set). Its output goes to `home`/server.log, whose end an assertion quotes if it fails to start."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": "",
        **settings,
    }
    args = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    log_path = home / "server.log"
    with open(log_path, "wb") as log:
        process = start(args, env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        try:
            wait_until(lambda: healthy(f"{url}/health"), process, "prefect server", timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}; its log ends:\n{log_path.read_text()[-3000:]}") from None
        yield {**env, "PREFECT_API_URL": url, "PREFECT_LOGGING_LEVEL": "WARNING"}
    finally:
        stop(process)


@contextlib.contextmanager
def moto_s3(bucket: str, key: str, secret: str) -> Iterator[tuple]:
    """moto's S3 server in this process on a free port of 127.0.0.1, with `bucket` made; yields
    (an s3fs filesystem on it, its endpoint URL). moto keeps one store per process, so each module
    takes a bucket of its own. The s3 options the runs set process-wide are dropped afterwards."""
    import fsspec.config
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, key=key, secret=secret)
        fs.mkdir(bucket)
        yield fs, endpoint
    finally:
        server.stop()
        fsspec.config.conf.pop("s3", None)
