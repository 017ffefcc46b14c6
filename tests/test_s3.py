"""The batch flow with manifest, images, output and cache on S3 (moto's server over HTTP, 127.0.0.1)."""

import io
import json

import fsspec.config
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from moto.server import ThreadedMotoServer
from prefect.settings import get_current_settings
from prefect.testing.utilities import prefect_test_harness

from stillmotion.cli import main
from stillmotion.tasks import COMPUTED

KEY, SECRET = "AKIASTILLMOTION0TEST", "stillmotion-secret-7f3a9c"


@pytest.fixture(scope="module")
def s3():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key=KEY, secret=SECRET)
    fs.mkdir("bucket")
    with prefect_test_harness(server_startup_timeout=120):
        yield fs, endpoint
    server.stop()
    fsspec.config.conf.pop("s3", None)


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
    assert fs.ls("bucket/out/.cache/prefect")  # Prefect's records live under the cache URL too

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
