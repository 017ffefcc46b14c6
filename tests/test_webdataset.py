"""`--format webdataset`: tar shards in manifest order, read back with the webdataset library (and a torch
DataLoader), on local disk and on S3 (moto); resume per row, repacking only what changed; kill -9."""

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch.utils.data
import webdataset as wds
from prefect.testing.utilities import prefect_test_harness

from services import moto_s3
from stillmotion.cli import main
from stillmotion.tasks import COMPUTED

KEY, SECRET = "AKIASTILLMOTION0WDS", "stillmotion-wds-secret"
IDS = ["a", "b.2", "missing", "d", "e"]  # rows 0..4; shard size 2: shards 0 (a, b.2), 1 (missing, d), 2 (e)


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    """PREFECT_HOME of the `stillmotion run` subprocesses (their embedded server)."""
    return tmp_path_factory.mktemp("prefect-home")


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def manifest_bytes(ids: list[str]) -> bytes:
    table = pa.table(
        {
            "video_id": ids,
            "image": [f"images/{'nope' if i == 'missing' else i}.png" for i in ids],
            "caption": ["a photo"] * len(ids),
            "prompts": [[f"a dog {i}"] if n % 2 else [f"a cat {i}", "a bird"] for n, i in enumerate(ids)],
            "steps": [3] * len(ids),
            "keyframes": [2] * len(ids),
            "frames": [2] * len(ids),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


@pytest.fixture
def local_manifest(tmp_path):
    (tmp_path / "in" / "images").mkdir(parents=True)
    for n, video_id in enumerate(IDS):
        (tmp_path / "in" / "images" / f"{video_id}.png").write_bytes(png(n))
    (tmp_path / "in" / "images" / "missing.png").unlink()
    (tmp_path / "in" / "manifest.parquet").write_bytes(manifest_bytes(IDS))
    return tmp_path / "in"


def run_args(manifest, output, model, *extra) -> list[str]:
    return [
        "run",
        str(manifest),
        "--output",
        str(output),
        "--model",
        str(model),
        "--format",
        "webdataset",
        "--shard-size",
        "2",
        "--no-progress",
        *extra,
    ]


def samples(urls: list[str]) -> list[dict]:
    return list(wds.WebDataset(urls, shardshuffle=False))


def check_samples(found: list[dict], ids: list[str]) -> None:
    """Every sample whole: its metadata names it, its prompts, and hashes of its video and preview."""
    assert [s["__key__"] for s in found] == [i.replace(".", "%2E") for i in ids]
    for sample in found:
        metadata = json.loads(sample["json"])
        assert metadata["video_id"].replace(".", "%2E") == sample["__key__"]
        assert sample["txt"].decode().split("\n") == metadata["prompts"]
        assert hashlib.sha256(sample["mp4"]).hexdigest() == metadata["hashes"]["video.mp4"]
        assert hashlib.sha256(sample["png"]).hexdigest() == metadata["hashes"]["preview.png"]


def stamps(folder) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name[:5].isdigit()}


def test_shards_in_manifest_order_with_parquet_and_stats_read_by_webdataset(
    local_manifest, tmp_path, tiny_model_dir
):
    output = tmp_path / "out"
    assert main(run_args(local_manifest / "manifest.parquet", output, tiny_model_dir)) == 3  # one row fails
    names = sorted(p.name for p in output.iterdir() if not p.name.startswith("."))
    shards = [f"{i:05d}{ext}" for i in range(3) for ext in (".parquet", ".tar", "_stats.json")]
    assert names == sorted([*shards, "report.html", "results.parquet"])  # no folder per video

    urls = [str(output / f"{i:05d}.tar") for i in range(3)]
    check_samples(samples(urls), ["a", "b.2", "d", "e"])
    loader = torch.utils.data.DataLoader(
        wds.WebDataset(urls, shardshuffle=False).to_tuple("__key__", "mp4"), batch_size=None
    )
    assert [key for key, _ in loader] == ["a", "b%2E2", "d", "e"]

    # each shard's Parquet has every row of the shard, the failed one with its reason; stats last
    shard1 = pq.read_table(output / "00001.parquet").to_pylist()
    assert [(r["video_id"], r["status"]) for r in shard1] == [("missing", "failed"), ("d", "ok")]
    assert "nope.png" in shard1[0]["error"]
    stats = json.loads((output / "00001_stats.json").read_text())
    assert (stats["count"], stats["successes"], stats["failed"]) == (2, 1, 1)
    assert stats["failures_by_reason"] == {shard1[0]["error"]: 1}
    assert (stats["first_row"], stats["last_row"]) == (2, 3) and stats["start"] <= stats["end"]
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert [r["shard"] for r in results] == [str(output / f"{n // 2:05d}.tar") for n in range(5)]
    assert results[1]["key"] == "b%2E2" and results[1]["video"] is None

    # a rerun rewrites no shard and computes nothing, even with the rows' folders gone from the cache
    before, computed = stamps(output), COMPUTED.copy()
    assert main(run_args(local_manifest / "manifest.parquet", output, tiny_model_dir)) == 3
    assert stamps(output) == before and COMPUTED == computed
    for folder in (output / ".cache" / "rows").iterdir():
        if not folder.name.startswith("."):
            shutil.rmtree(folder)
    assert main(run_args(local_manifest / "manifest.parquet", output, tiny_model_dir)) == 3
    assert stamps(output) == before and COMPUTED == computed
    results = pq.read_table(output / "results.parquet").to_pylist()
    # the failed row too: it failed on its own input (a missing image), which has not changed
    assert [r["cached"] for r in results] == [True, True, True, True, True]

    # the failed row's image appears: that row is made, its shard alone repacked (its other row taken
    # from the old shard, its folder being gone); the other shards stay as they are
    (local_manifest / "images" / "nope.png").write_bytes(png(9))
    assert main(run_args(local_manifest / "manifest.parquet", output, tiny_model_dir)) == 0
    after = stamps(output)
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {"00001.tar", "00001.parquet", "00001_stats.json"}
    assert set(COMPUTED - computed) == {"source", "invert", "keyframes", "frames", "encode", "scores"}
    check_samples(samples([str(output / "00001.tar")]), ["missing", "d"])


# `stillmotion run` killed (SIGKILL, by itself) halfway through uploading its second shard
KILLED_MID_SHARD = """
import os, signal, sys
from stillmotion import storage
from stillmotion.cli import main

put_file = storage.Store.put_file
calls = []

def killed(self, local_path, relative):
    calls.append(relative)
    if len(calls) == 2:
        data = open(local_path, "rb").read()
        with open(self.path(storage.TEMPORARY_PREFIX + storage.owner_tag()), "wb") as handle:
            handle.write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    put_file(self, local_path, relative)

storage.Store.put_file = killed
sys.exit(main(sys.argv[1:]))
"""
RUN = "import sys; from stillmotion.cli import main; sys.exit(main(sys.argv[1:]))"


def test_a_kill_while_packing_leaves_no_partial_shard_and_the_rerun_completes_every_shard(
    local_manifest, tmp_path, tiny_model_dir, prefect_home
):
    output = tmp_path / "out"
    (local_manifest / "images" / "nope.png").write_bytes(png(9))
    args = run_args(local_manifest / "manifest.parquet", output, tiny_model_dir)
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": ""}
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_SHARD, *args], env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in output.iterdir() if p.name.startswith(".tmp-")]  # the half-written upload
    for tar in output.glob("*.tar"):  # every shard a loader can see is whole and marked complete
        assert (output / f"{tar.stem}_stats.json").exists()
        with tarfile.open(tar) as archive:
            assert len(archive.getmembers()) == 4 * 2
    assert not (output / "00001.tar").exists()
    made = {p.name for p in (output / ".cache" / "rows").iterdir() if not p.name.startswith(".")}

    rerun = subprocess.run([sys.executable, "-c", RUN, *args], env=env, timeout=300)
    assert rerun.returncode == 0
    assert not [p.name for p in output.iterdir() if p.name.startswith(".tmp-")]
    check_samples(samples([str(output / f"{i:05d}.tar") for i in range(3)]), IDS)
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert {r["video_id"] for r in results if r["cached"]} == made  # nothing finished was made again


@pytest.fixture(scope="module")
def s3():
    with moto_s3("wds-bucket", KEY, SECRET) as served:
        yield served


def objects(fs) -> dict:
    """{name: last modified} of the objects at the output's top level."""
    return {
        e["name"].rsplit("/", 1)[-1]: e["LastModified"]
        for e in fs.ls("wds-bucket/out", detail=True)
        if e["type"] == "file"
    }


def test_shards_on_s3_are_read_by_webdataset_and_a_rerun_rewrites_nothing(s3, tiny_model_dir, monkeypatch):
    fs, endpoint = s3
    ids = ["a", "b.2", "d"]
    for n, video_id in enumerate(ids):
        fs.pipe_file(f"wds-bucket/in/images/{video_id}.png", png(n))
    fs.pipe_file("wds-bucket/in/manifest.parquet", manifest_bytes(ids))
    options = json.dumps({"endpoint_url": endpoint, "key": KEY, "secret": SECRET})
    args = run_args("s3://wds-bucket/in/manifest.parquet", "s3://wds-bucket/out", tiny_model_dir)
    args += ["--storage-options", options]
    assert main(args) == 0
    listed = objects(fs)
    assert {"00000.tar", "00000_stats.json", "00001.tar", "00001_stats.json", "report.html"} <= set(listed)
    assert not [name for name in listed if name.startswith(".tmp-")]

    # webdataset opens s3:// URLs through a handler of its own; here, fsspec's
    monkeypatch.setitem(wds.gopen_schemes, "s3", lambda url, mode="rb", bufsize=8192: fs.open(url, mode))
    check_samples(samples(["s3://wds-bucket/out/00000.tar", "s3://wds-bucket/out/00001.tar"]), ids)

    time.sleep(1.1)  # S3 times objects to the second: a rewrite would show
    assert main(args) == 0
    fs.invalidate_cache()
    again = objects(fs)
    assert {k: v for k, v in again.items() if k[:5].isdigit()} == {
        k: v for k, v in listed.items() if k[:5].isdigit()
    }


# ---------------------------------------------------------------- repacking never loses a row; leases

TINY = {"steps": 1, "keyframes": 1, "frames": 1}


def tiny_manifest(folder, ids: list[str]) -> str:
    """A manifest of tiny rows (1 step, 1 key frame, 1 frame), each with its own image (an image already
    there is left as it is: a rewritten one would be another input)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for video_id in ids:
        image = folder / "images" / f"{video_id}.png"
        if not image.exists():
            image.write_bytes(png(int(video_id.removeprefix("r"), 36)))
    table = pa.table(
        {
            "video_id": ids,
            "image": [f"images/{i}.png" for i in ids],
            "caption": ["a photo"] * len(ids),
            "prompts": [[f"a dog {i}"] for i in ids],
            **{name: [value] * len(ids) for name, value in TINY.items()},
        }
    )
    pq.write_table(table, folder / "manifest.parquet")
    return str(folder / "manifest.parquet")


def tiny_args(manifest, output, model, size: int) -> list[str]:
    args = run_args(manifest, output, model)
    args[args.index("--shard-size") + 1] = str(size)
    return args


def shards_of(output) -> list[str]:
    return sorted(str(p) for p in output.glob("[0-9][0-9][0-9][0-9][0-9].tar"))


def forget_rows(output) -> None:
    """Delete the rows' folders from the cache (the README allows it once the shards are written)."""
    for folder in (output / ".cache" / "rows").iterdir():
        if not folder.name.startswith("."):
            shutil.rmtree(folder)


def all_ok(output, ids: list[str]) -> list[dict]:
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert [(r["video_id"], r["status"]) for r in results] == [(i, "ok") for i in ids]
    return results


def test_a_shard_size_change_with_the_rows_folders_gone_keeps_every_row(tmp_path, tiny_model_dir):
    ids = [f"r{i}" for i in range(6)]
    manifest, output = tiny_manifest(tmp_path / "in", ids), tmp_path / "out"
    assert main(tiny_args(manifest, output, tiny_model_dir, 4)) == 0  # shards r0-r3, r4-r5
    packed = {s["__key__"]: s["mp4"] for s in samples(shards_of(output))}
    forget_rows(output)
    computed = COMPUTED.copy()

    # size 2: the new 00000.tar (r0, r1) replaces the only copy of r2, r3; 00001.tar that of r4, r5
    assert main(tiny_args(manifest, output, tiny_model_dir, 2)) == 0
    assert shards_of(output) == [str(output / f"{i:05d}.tar") for i in range(3)]
    found = samples(shards_of(output))
    check_samples(found, ids)
    assert {s["__key__"]: s["mp4"] for s in found} == packed  # the same videos, nothing made again
    assert COMPUTED == computed
    assert all(r["cached"] for r in all_ok(output, ids))
    rows = output / ".cache" / "rows"  # copied back before their shard was replaced, metadata.json last
    assert sorted(p.name for p in rows.iterdir() if not p.name.startswith(".")) == ["r2", "r3", "r4", "r5"]
    for video_id in ("r2", "r3", "r4", "r5"):
        metadata = json.loads((rows / video_id / "metadata.json").read_text())
        assert (
            hashlib.sha256((rows / video_id / "video.mp4").read_bytes()).hexdigest()
            == (metadata["hashes"]["video.mp4"])
        )
    assert not list((output / ".leases").iterdir())  # every shard lease given back


def test_rows_moved_by_a_manifest_edit_are_all_in_the_new_shards(tmp_path, tiny_model_dir):
    ids = [f"r{i}" for i in range(4)]
    manifest, output = tiny_manifest(tmp_path / "in", ids), tmp_path / "out"
    assert main(tiny_args(manifest, output, tiny_model_dir, 2)) == 0  # shards r0-r1, r2-r3
    forget_rows(output)
    computed = COMPUTED.copy()

    edited = ["rz", *ids]  # a row inserted at the top: every row moves to the next shard position
    manifest = tiny_manifest(tmp_path / "in", edited)
    assert main(tiny_args(manifest, output, tiny_model_dir, 2)) == 0
    assert shards_of(output) == [str(output / f"{i:05d}.tar") for i in range(3)]
    check_samples(samples(shards_of(output)), edited)
    results = all_ok(output, edited)
    assert [r["cached"] for r in results] == [False, True, True, True, True]
    assert (COMPUTED - computed)["encode"] == 1  # the new row alone was made


def test_a_shard_another_live_run_is_packing_is_left_to_it(tmp_path, tiny_model_dir, capsys):
    ids = [f"r{i}" for i in range(4)]
    manifest, output = tiny_manifest(tmp_path / "in", ids), tmp_path / "out"
    lease = output / ".leases" / ".shard-00001"  # a name no video id can take
    lease.parent.mkdir(parents=True)
    lease.write_text("t.1.elsewhere")  # held by a run on another machine, touched just now
    assert main(tiny_args(manifest, output, tiny_model_dir, 2)) == 0
    assert shards_of(output) == [str(output / "00000.tar")]  # 00001 not packed by this run
    assert not (output / "00001_stats.json").exists() and not (output / "00001.parquet").exists()
    assert "shards left to another run packing them: 00001" in capsys.readouterr().err
    assert lease.read_text() == "t.1.elsewhere"  # never taken or deleted

    lease.unlink()  # that run is done (it died before packing): the next run packs the shard
    before = stamps(output)
    assert main(tiny_args(manifest, output, tiny_model_dir, 2)) == 0
    check_samples(samples(shards_of(output)), ids)
    assert stamps(output)["00000.tar"] == before["00000.tar"]  # the complete shard kept as it is


def test_leases_by_name_for_rows_and_shards_on_local_disk(tmp_path):
    from stillmotion import storage

    output = tmp_path / "out"
    store = storage.OutputStore(str(output))
    leases = output / ".leases"
    assert store.take_shard_lease("00000") and not store.take_shard_lease("00000")  # held (by us, alive)
    assert (leases / ".shard-00000").read_text().split(".", 1)[1] == f"{os.getpid()}.{storage.machine_id()}"
    assert store.take_lease("00000")  # a row whose id looks like a shard's name: another lease
    assert sorted(p.name for p in leases.iterdir()) == [".shard-00000", "00000"]
    store.release_shard_lease("00000")
    assert sorted(p.name for p in leases.iterdir()) == ["00000"]
    assert store.take_shard_lease("00000")
    store.release_shard_lease("00000")
    store.release_lease("00000")
    assert not list(leases.iterdir())
    with pytest.raises(ValueError):
        store.leases.take("a/b")

    # another process's lease: refused while it lives; taken over once it is gone
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (leases / ".shard-00001").write_text(f"t.{holder.pid}.{storage.machine_id()}")
        assert not store.take_shard_lease("00001")
    finally:
        holder.kill()
        holder.wait()
    assert store.take_shard_lease("00001")
    assert (leases / ".shard-00001").read_text() != f"t.{holder.pid}.{storage.machine_id()}"
    store.release_shard_lease("00001")
    # another machine's: refused while it is renewed, taken once untouched for ABANDONED_AFTER_S
    (leases / ".shard-00002").write_text("t.1.elsewhere")
    assert not store.take_shard_lease("00002")
    stale = time.time() - 2 * storage.ABANDONED_AFTER_S
    os.utime(leases / ".shard-00002", (stale, stale))
    assert store.take_shard_lease("00002")
    assert store.renew_leases() == 1 and time.time() - (leases / ".shard-00002").stat().st_mtime < 60
    store.release_shard_lease("00002")
    assert not list(leases.iterdir())


def fake_rows(rows, ids: list[str], fingerprint: str = "f") -> None:
    """Rows' folders as a run publishes them (the bytes need not be a real video here)."""
    for video_id in ids:
        files = {"video.mp4": f"mp4 {video_id}".encode(), "preview.png": f"png {video_id}".encode()}
        metadata = {"video_id": video_id, "prompts": ["a dog"], "fingerprint": fingerprint}
        rows.publish(video_id, files, metadata)


def shard_writer(output, total: int, size: int):
    from stillmotion.flows.tracking import RESULT_FIELDS
    from stillmotion.shards import ShardWriter
    from stillmotion.storage import OutputStore

    fields = list(RESULT_FIELDS)  # with a fingerprint column, whether or not the run's results have it yet
    if "fingerprint" not in {f.name for f in fields}:
        fields.append(pa.field("fingerprint", pa.string()))
    outputs, rows = OutputStore(str(output)), OutputStore(str(output / ".cache" / "rows"))
    return ShardWriter(outputs, rows, total, size, pa.schema(fields)), rows


def record(row: int, video_id: str, fingerprint: str | None, status: str = "ok") -> dict:
    return {"video_id": video_id, "status": status, "error": None if status == "ok" else "bad", "row": row,
            "seconds": 1.0, "cached": False, "fingerprint": fingerprint}  # fmt: skip


def test_fingerprints_of_packed_rows_and_a_shard_repacked_when_they_change(tmp_path):
    output = tmp_path / "out"
    writer, rows = shard_writer(output, 3, 3)
    fake_rows(rows, ["a", "b"])
    for n, (video_id, status) in enumerate([("a", "ok"), ("b", "ok"), ("c", "failed")]):
        writer.add(record(n, video_id, f"fp-{video_id}", status))
    assert writer.counts()["packed"] == 1

    writer, rows = shard_writer(output, 3, 3)  # the next run reads them from the shard's Parquet
    assert [writer.fingerprint_of(i) for i in ("a", "b", "c", "z")] == ["fp-a", "fp-b", None, None]
    for n, (video_id, status) in enumerate([("a", "ok"), ("b", "ok"), ("c", "failed")]):
        writer.add(record(n, video_id, f"fp-{video_id}", status))
    assert writer.counts()["kept"] == 1 and writer.counts()["packed"] == 0  # same rows, same fingerprints

    writer, rows = shard_writer(output, 3, 3)
    for n, (video_id, status) in enumerate([("a", "ok"), ("b", "ok"), ("c", "failed")]):
        writer.add(record(n, video_id, "fp-new" if video_id == "b" else f"fp-{video_id}", status))
    assert writer.counts()["packed"] == 1  # b was made again from another input: repacked
    assert writer.fingerprint_of("b") == "fp-new"

    table = pq.read_table(output / "00000.parquet").drop_columns(["fingerprint"])
    pq.write_table(table, output / "00000.parquet")  # a shard packed before rows had fingerprints
    writer, rows = shard_writer(output, 3, 3)
    assert writer.fingerprint_of("a") is None and writer.is_complete("a")
    for n, (video_id, status) in enumerate([("a", "ok"), ("b", "ok"), ("c", "failed")]):
        writer.add(record(n, video_id, "fp-other", status))
    assert writer.counts()["kept"] == 1  # nothing to compare them with: kept
