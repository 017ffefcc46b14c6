"""The batch flow on S3 with faults: a small HTTP proxy in front of moto's server (127.0.0.1) answers
some requests with 503 SlowDown or drops their connection unanswered.

1. With about a fifth of the requests failed at random, and every key frame upload refused for longer
   than the S3 client retries (so stillmotion's own stage retries must finish the row), a run finishes
   every row; every published video folder is whole (metadata.json and every file it lists, with the
   sha256 it records) and no temporary or staging object is left outside the cache.
2. A results.parquet upload that S3 keeps refusing ends the run with exit status 1 and one line on
   stderr naming results.parquet and the cause, no traceback.
"""

import contextlib
import hashlib
import http.client
import io
import json
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import botocore.retries.standard as standard_retries
import fsspec.config
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from moto.server import ThreadedMotoServer
from prefect.testing.utilities import prefect_test_harness

from stillmotion.cli import main
from stillmotion.storage import STORAGE_OPTIONS_ENV, TEMPORARY_PREFIX
from stillmotion.tasks import stages

KEY, SECRET = "AKIASTILLMOTION0TEST", "stillmotion-secret-7f3a9c"
BUCKET = "faults"  # not test_s3.py's: moto's buckets are per process, shared by all its servers
FAST = {"steps": 3, "keyframes": 2, "frames": 2}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
FORWARD, SLOW, DROP, LOSE = "forward", "503", "drop", "lose"  # LOSE: forwarded, then the answer dropped


def forward_all(method: str, path: str) -> str:
    return FORWARD


class FaultProxy:
    """An HTTP/1.1 proxy to one upstream, on 127.0.0.1, one connection per request. `rule(method,
    path_and_query)`, called under `lock`, decides each request: FORWARD; SLOW, a 503 SlowDown answer;
    DROP, the connection closed unanswered and the request not forwarded; LOSE, forwarded and then the
    connection closed without the answer."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.rule = forward_all
        self.lock = threading.Lock()
        self.actions: Counter[str] = Counter()
        self.hits: Counter[tuple[str, str]] = Counter()  # (method, action)
        self.chunked = 0  # requests whose body came with Transfer-Encoding: chunked
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # so that an `Expect: 100-continue` is answered

            def log_message(self, format, *args) -> None:
                pass

            def handle_request(self) -> None:
                self.close_connection = True
                body = self._body()
                with proxy.lock:
                    action = proxy.rule(self.command, self.path)
                    proxy.actions[action] += 1
                    proxy.hits[(self.command, action)] += 1
                if action == SLOW:
                    self.send_response_only(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                if action in (FORWARD, LOSE):
                    status, reason, headers, data = self._forward(body)
                if action in (DROP, LOSE):
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                assert action == FORWARD, action
                self.send_response_only(status, reason)
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_request

            def _body(self) -> bytes:
                if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.chunked += 1
                chunks = []
                while size := int(self.rfile.readline().split(b";", 1)[0].strip(), 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()  # the CRLF closing each chunk
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, dropped
                    pass
                return b"".join(chunks)

            def _forward(self, body: bytes):
                """The upstream's answer to this request: status, reason, headers to send, body."""
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():  # Host included: the client signed it
                        if name.lower() not in HOP_BY_HOP | {"content-length", "expect"}:
                            upstream.putheader(name, value)
                    if body or self.command in ("PUT", "POST"):
                        upstream.putheader("Content-Length", str(len(body)))
                    upstream.putheader("Connection", "close")
                    upstream.endheaders(body or None)
                    response = upstream.getresponse()
                    data = response.read()  # chunked answers are decoded here
                    headers = [
                        (name, value)
                        for name, value in response.getheaders()
                        if name.lower() not in HOP_BY_HOP | {"content-length"}
                    ]
                    if self.command == "HEAD" or response.status in (204, 304):
                        length, data = response.getheader("Content-Length"), b""  # the object's size
                    else:
                        length = str(len(data))
                    if length is not None:
                        headers.append(("Content-Length", length))
                    headers.append(("Connection", "close"))
                    return response.status, response.reason, headers, data
                finally:
                    upstream.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self, rule) -> None:
        with self.lock:
            self.rule = rule
            self.actions.clear()
            self.hits.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def s3():
    """moto's server, a FaultProxy in front of it, and an s3fs filesystem that talks to moto directly."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    direct = s3fs.S3FileSystem(endpoint_url=f"http://{host}:{port}", key=KEY, secret=SECRET)
    direct.makedirs(BUCKET, exist_ok=True)
    proxy = FaultProxy(f"http://{host}:{port}")
    try:
        with prefect_test_harness(server_startup_timeout=120):
            yield direct, proxy
    finally:
        proxy.close()
        server.stop()


@pytest.fixture(autouse=True)
def own_storage_options(monkeypatch):
    """The storage options a run sets process-wide (fsspec's config, the environment) end with it."""
    monkeypatch.delenv(STORAGE_OPTIONS_ENV, raising=False)
    saved = fsspec.config.conf.pop("s3", None)
    yield
    fsspec.config.conf.pop("s3", None)
    if saved is not None:
        fsspec.config.conf["s3"] = saved


@pytest.fixture
def short_retry_waits():
    saved = list(stages.STORAGE_RETRY_DELAYS)
    stages.STORAGE_RETRY_DELAYS[:] = [0.2] * len(saved)  # the tasks hold this list: same retries, less wait
    yield
    stages.STORAGE_RETRY_DELAYS[:] = saved


def put_manifest(fs: s3fs.S3FileSystem, prefix: str, rows: list[dict]) -> str:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{**row, **FAST} for row in rows]), buffer)
    fs.pipe_file(f"{BUCKET}/{prefix}/manifest.parquet", buffer.getvalue())
    return f"s3://{BUCKET}/{prefix}/manifest.parquet"


def run(manifest: str, output: str, model, proxy: FaultProxy, attempts: int) -> int:
    """`stillmotion run`, in this process, with the S3 client pointed at the proxy; botocore tries each
    request `attempts` times (`total_max_attempts`: its `max_attempts` counts the retries alone)."""
    options = {
        "endpoint_url": proxy.endpoint,
        "key": KEY,
        "secret": SECRET,
        "config_kwargs": {"retries": {"total_max_attempts": attempts, "mode": "standard"}},
    }
    args = ["run", manifest, "--output", output, "--model", str(model), "--storage-options"]
    return main([*args, json.dumps(options), "--no-progress"])


def test_flaky_s3_finishes_every_row_with_no_partial_object(
    s3, tiny_model_dir, short_retry_waits, monkeypatch
):
    fs, proxy = s3
    rendered = Counter()  # key frame computations per prompt list: one per attempt of the stage
    real_render = stages.render_candidates

    def render_candidates(sd, noise, caption, prompts, *args, **kwargs):
        rendered[tuple(prompts)] += 1
        return real_render(sd, noise, caption, prompts, *args, **kwargs)

    monkeypatch.setattr(stages, "render_candidates", render_candidates)
    # botocore tries each request 5 times (attempts=5 below), each time s3fs tries it (5 times); its waits
    # between tries (up to 8 s) are shortened, for speed alone
    monkeypatch.setattr(standard_retries.ExponentialBackoff, "delay_amount", lambda self, context: 0.02)
    for i in range(2):
        buffer = io.BytesIO()
        pixels = np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(buffer, format="PNG")
        fs.pipe_file(f"{BUCKET}/flaky-in/images/{i}.png", buffer.getvalue())
    ids = ["a", "b"]
    manifest = put_manifest(
        fs,
        "flaky-in",
        [
            {"video_id": "a", "image": "images/0.png", "caption": "a photo", "prompts": ["a dog"]},
            {"video_id": "b", "image": "images/1.png", "caption": "a photo", "prompts": ["a cat", "a bird"]},
        ],
    )
    # Each row's key frame data upload is refused (503 for one row, dropped for the other) until its
    # stage has run again, which the stage's second sidecar upload shows (sidecar uploads are never
    # faulted, so there is one per run of the stage): no retry inside the S3 client gets it through.
    sidecars: Counter[str] = Counter()  # key frame artifact key -> uploads of its sidecar
    refused: dict[str, list] = {}  # key frame artifact key -> [how, refusals]
    rng = random.Random(20240611)

    def flaky(method: str, path: str) -> str:
        if method == "PUT" and "/.cache/artifacts/keyframes/" in path:
            key, _, ext = urlsplit(path).path.rpartition(".")
            if ext == "json":
                sidecars[key] += 1
                return FORWARD
            if sidecars[key] < 2:
                refusal = refused.setdefault(key, [DROP if refused else SLOW, 0])
                refusal[1] += 1
                return refusal[0]
        draw = rng.random()
        return SLOW if draw < 0.1 else DROP if draw < 0.15 else LOSE if draw < 0.2 else FORWARD

    proxy.reset(flaky)
    started = time.monotonic()
    try:
        status = run(manifest, f"s3://{BUCKET}/flaky", tiny_model_dir, proxy, attempts=5)
    finally:
        proxy.rule = forward_all  # the counts stay
    print(f"run: {time.monotonic() - started:.1f} s, exit {status}, proxy: {dict(proxy.hits)}, {refused}")
    print(f"chunked request bodies: {proxy.chunked}")
    faults = [proxy.actions[SLOW], proxy.actions[DROP], proxy.actions[LOSE]]
    assert min(faults) > 0 and sum(faults) > 40  # faults of every kind were injected
    assert sorted(how for how, count in refused.values()) == sorted([SLOW, DROP])
    assert min(count for how, count in refused.values()) > 1  # the S3 client tried again, in vain
    assert list(sidecars.values()) == [2, 2]  # each key frame stage ran twice, the second run got through
    assert status == 0
    assert rendered == {("a dog",): 2, ("a cat", "a bird"): 2}  # and computed each time

    fs.invalidate_cache()
    results = pq.read_table(io.BytesIO(fs.cat_file(f"{BUCKET}/flaky/results.parquet"))).to_pylist()
    assert [(r["video_id"], r["status"], r["error"]) for r in results] == [(i, "ok", None) for i in ids]
    for video_id, result in zip(ids, results, strict=True):
        folder = f"{BUCKET}/flaky/{video_id}"
        assert result["metadata"] == f"s3://{folder}/metadata.json"
        metadata = json.loads(fs.cat_file(f"{folder}/metadata.json"))
        listed = metadata["hashes"]  # every other file of the video by its sha256 (no sizes recorded)
        assert {"video.mp4", "source.png", "preview.png", "keyframes/000.png"} <= set(listed)
        published = {path.removeprefix(f"{folder}/") for path in fs.find(folder)}
        assert published == set(listed) | {"metadata.json"}
        for name, digest in listed.items():
            data = fs.cat_file(f"{folder}/{name}")
            assert fs.info(f"{folder}/{name}")["size"] == len(data) > 0
            assert hashlib.sha256(data).hexdigest() == digest, f"{video_id}/{name}"
    outside_cache = [p for p in fs.find(f"{BUCKET}/flaky") if not p.startswith(f"{BUCKET}/flaky/.cache/")]
    assert [p for p in outside_cache if TEMPORARY_PREFIX in p or ".staging" in p] == []


def test_results_upload_that_keeps_failing_is_one_line(s3, tiny_model_dir, capsys, monkeypatch):
    fs, proxy = s3
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 2)  # s3fs's own tries (5): not a storage option
    # a rerun with its video complete already: no model work, then the results upload
    rows = [{"video_id": "s", "source_prompt": "a car", "prompts": ["a bus"]}]
    manifest = put_manifest(fs, "stuck-in", rows)
    assert run(manifest, f"s3://{BUCKET}/stuck", tiny_model_dir, proxy, attempts=2) == 0  # made once
    capsys.readouterr()
    uploads = []

    def refuse_results(method: str, path: str) -> str:  # a PutObject, or any part of a multipart upload
        if method in ("PUT", "POST") and urlsplit(path).path.endswith("/results.parquet"):
            uploads.append(path)
            return SLOW
        return FORWARD

    proxy.reset(refuse_results)
    capsys.readouterr()
    try:
        status = run(manifest, f"s3://{BUCKET}/stuck", tiny_model_dir, proxy, attempts=2)
    finally:
        proxy.rule = forward_all  # the counts stay
    captured = capsys.readouterr()
    print(f"exit {status}, uploads refused: {uploads}")
    assert status == 1
    assert len(uploads) >= 2  # the S3 client did try again
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"stillmotion run: error: cannot write s3://{BUCKET}/stuck/results.parquet: ")
    assert "Please reduce your request rate" in lines[0]  # the cause, as S3 gave it
    assert "Traceback" not in captured.err + captured.out
    assert "rows:" not in captured.out  # no summary of a run whose results are not written
    fs.invalidate_cache()  # the first run's results stay as they were: none is half written
    assert pq.read_table(io.BytesIO(fs.cat_file(f"{BUCKET}/stuck/results.parquet"))).num_rows == 1


def test_the_flows_own_lookups_retry_a_503_and_one_that_persists_is_one_line(
    s3, tiny_model_dir, capsys, monkeypatch
):
    """The batch flow's own storage calls (is this video complete? take a row's lease) are not stages
    that Prefect retries: they retry transient errors themselves, and the rest is one line."""
    from stillmotion import storage

    fs, proxy = s3
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    monkeypatch.setattr(storage.fs, "FLOW_RETRY_DELAYS", [0.05, 0.05, 0.05])
    rows = [{"video_id": "p", "source_prompt": "a car", "prompts": ["a bus"]}]
    manifest = put_manifest(fs, "probe-in", rows)
    # made once: a rerun only looks its metadata.json up (its fingerprint: the row is current)
    assert run(manifest, f"s3://{BUCKET}/probe", tiny_model_dir, proxy, attempts=3) == 0
    lookups = []

    def refuse_lookups(times: int):
        def rule(method: str, path: str) -> str:
            if method == "GET" and urlsplit(path).path.endswith("/probe/p/metadata.json"):
                lookups.append(path)
                return SLOW if len(lookups) <= times else FORWARD
            return FORWARD

        return rule

    proxy.reset(refuse_lookups(2))  # each try of the flow's lookup is one GET (botocore: 1 attempt)
    try:
        status = run(manifest, f"s3://{BUCKET}/probe", tiny_model_dir, proxy, attempts=1)
    finally:
        proxy.rule = forward_all
    assert status == 0 and len(lookups) >= 3, capsys.readouterr().err
    fs.invalidate_cache()
    results = pq.read_table(io.BytesIO(fs.cat_file(f"{BUCKET}/probe/results.parquet"))).to_pylist()
    assert [(r["status"], r["cached"]) for r in results] == [("ok", True)]

    lookups.clear()
    proxy.reset(refuse_lookups(10**6))
    capsys.readouterr()
    try:
        status = run(manifest, f"s3://{BUCKET}/probe", tiny_model_dir, proxy, attempts=1)
    finally:
        proxy.rule = forward_all
    captured = capsys.readouterr()
    assert status == 1 and len(lookups) == 1 + len(storage.fs.FLOW_RETRY_DELAYS)
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stillmotion run: error: storage failed during the run ")
    assert "run again to resume" in lines[0] and "Traceback" not in captured.err + captured.out
