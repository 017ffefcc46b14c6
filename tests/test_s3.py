"""The batch flow with manifest, images, output and cache on S3 (moto's server over HTTP, 127.0.0.1)."""

import io
import json

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.settings import get_current_settings
from prefect.testing.utilities import prefect_test_harness

from services import moto_s3
from stillmotion.cli import main
from stillmotion.tasks import COMPUTED

KEY, SECRET = "AKIASTILLMOTION0TEST", "stillmotion-secret-7f3a9c"


@pytest.fixture(scope="module")
def s3():
    with moto_s3("bucket", KEY, SECRET) as served, prefect_test_harness(server_startup_timeout=120):
        yield served


def test_flow_on_s3_resumes_and_leaks_no_secret(s3, tiny_model_dir, capsys):
    fs, endpoint = s3
    for i in range(2):
        buffer = io.BytesIO()
        rng = np.random.default_rng(i)
        PIL.Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buffer, format="PNG")
        fs.pipe_file(f"bucket/in/images/{i}.png", buffer.getvalue())
    table = pa.table(
        {
            "video_id": ["a", "b", "missing"],
            "image": ["images/0.png", "images/1.png", "images/nope.png"],
            "caption": ["a photo"] * 3,
            "prompts": [["a dog"], ["a cat", "a bird"], ["a dog"]],
            "steps": [3] * 3,
            "keyframes": [2] * 3,
            "frames": [2] * 3,
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs.pipe_file("bucket/in/manifest.parquet", buffer.getvalue())

    options = json.dumps({"endpoint_url": endpoint, "key": KEY, "secret": SECRET})
    args = [
        "run",
        "s3://bucket/in/manifest.parquet",
        "--output",
        "s3://bucket/out",
        "--model",
        str(tiny_model_dir),
        "--storage-options",
        options,
        "--no-progress",
    ]
    assert main(args) == 3  # the missing image fails alone
    results = pq.read_table(io.BytesIO(fs.cat_file("bucket/out/results.parquet"))).to_pylist()
    assert [r["status"] for r in results] == ["ok", "ok", "failed"]
    assert "s3://bucket/in/images/nope.png" in results[2]["error"]
    assert fs.exists("bucket/out/a/metadata.json") and fs.exists("bucket/out/b/video.mp4")
    assert not fs.exists("bucket/out/.cache/prefect")  # no Prefect result records: artifacts only

    # rerun: complete videos found by lookup; a lost video comes back from the S3 cache alone
    before = COMPUTED.copy()
    assert main(args) == 3
    fs.rm("bucket/out/b", recursive=True)
    assert main(args) == 3
    assert COMPUTED == before
    assert json.loads(fs.cat_file("bucket/out/b/metadata.json"))["prompts"] == ["a cat", "a bird"]

    # no secret in anything written: outputs, metadata, results, logs, Prefect's database, the terminal
    written = b"".join(fs.cat_file(path) for path in fs.find("bucket/out"))
    assert fs.exists("bucket/out/.logs/missing.txt")
    database = get_current_settings().server.database.connection_url.get_secret_value()
    written += open(database.split("///", 1)[1], "rb").read()
    captured = capsys.readouterr()
    for text in (written, (captured.out + captured.err).encode()):
        assert SECRET.encode() not in text and KEY.encode() not in text


def test_a_lease_on_s3_is_a_conditional_write_two_machines_cannot_both_take(s3, monkeypatch):
    """On an object store the lease is created with If-None-Match (moto answers 412 as S3 does): a
    second machine's claim of a held row fails, it never overwrites the holder's lease."""
    from stillmotion import storage

    fs, endpoint = s3
    options = {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}
    here = storage.OutputStore("s3://bucket/leases", options)
    assert here.take_lease("a")
    lease = fs.cat_file("bucket/leases/.leases/a").decode()
    held = dict(storage.leases._HELD_LEASES)
    monkeypatch.setattr(storage.fs, "machine_id", lambda: "elsewhere")  # another machine, on the same bucket
    storage.leases._HELD_LEASES.clear()
    there = storage.OutputStore("s3://bucket/leases", options)
    writes, real_pipe = [], there.fs.pipe_file

    def pipe_file(path, data, *args, **kwargs):  # every object write: its mode
        if "/.clock-" not in path:  # the store's clock, read once (see storage.leases.store_now)
            writes.append(kwargs.get("mode", "overwrite"))
        return real_pipe(path, data, *args, **kwargs)

    monkeypatch.setattr(there.fs, "pipe_file", pipe_file)
    assert not there.take_lease("a")  # held by a live run elsewhere (fresh: not an hour old)
    assert writes == ["create"]  # one conditional write, refused by the store
    fs.invalidate_cache()
    assert fs.cat_file("bucket/leases/.leases/a").decode() == lease  # the holder's, untouched
    assert there.take_lease("b")  # a free row it does take
    storage.leases._HELD_LEASES.clear()
    storage.leases._HELD_LEASES.update(held)
    monkeypatch.undo()
    here.release_lease("a")
    fs.invalidate_cache()
    assert not fs.exists("bucket/leases/.leases/a")
