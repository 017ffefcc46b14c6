"""A full disk and what killed runs leave behind: one line and no temporary files; leftovers cleaned."""

import errno
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import fsspec
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from prefect.testing.utilities import prefect_test_harness
from safetensors.torch import load_file

from stillmotion import single, storage
from stillmotion.cli import main
from stillmotion.flows import batch_flow
from stillmotion.models import ImageError
from stillmotion.storage import StorageError, is_transient
from stillmotion.tasks import COMPUTED, stages

FAST = {"steps": 3, "keyframes": 2, "frames": 2}


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def manifest(path: Path, ids: list[str]) -> str:
    table = pa.table(
        {
            "video_id": ids,
            "source_prompt": ["a red car"] * len(ids),
            "prompts": [["a blue car"]] * len(ids),
            **{name: [value] * len(ids) for name, value in FAST.items()},
        }
    )
    pq.write_table(table, path)
    return str(path)


class Disk:
    """Our local writes on a disk of `free` bytes: past it a write stores what fits and raises ENOSPC."""

    def __init__(self, free: float) -> None:
        self.free, self.written = free, 0

    def open(self, path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return handle
        disk, write = self, handle.write

        def limited(data) -> int:
            fits = int(max(0, min(len(data), disk.free - disk.written)))
            write(data[:fits])
            disk.written += fits
            if fits < len(data):
                handle.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            return fits

        handle.write = limited
        return handle


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(storage.TEMPORARY_PREFIX)]


def test_a_full_disk_is_one_line_leaves_no_temporary_files_and_the_rerun_completes(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    rows = manifest(tmp_path / "m.parquet", ["a", "b"])
    args = ["--model", str(tiny_model_dir), "--no-progress"]
    measured = Disk(float("inf"))
    monkeypatch.setattr(storage.fs, "open", measured.open, raising=False)
    assert main(["run", rows, "--output", str(tmp_path / "measure"), *args]) == 0

    output = tmp_path / "out"
    monkeypatch.setattr(storage.fs, "open", Disk(measured.written // 2).open, raising=False)
    capsys.readouterr()
    assert main(["run", rows, "--output", str(output), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert "results.parquet" in err[-1] and "No space left on device" in err[-1]
    assert temporaries(output) == []
    assert [p for p in (output / ".staging").rglob("*") if p.is_file()] == []  # no partial video folder

    monkeypatch.undo()  # space freed
    assert main(["run", rows, "--output", str(output), *args]) == 0
    assert [r["status"] for r in pq.read_table(output / "results.parquet").to_pylist()] == ["ok", "ok"]


def test_leftovers_of_killed_runs_are_cleaned_and_live_ones_kept(tiny_model_dir, tmp_path):
    rows = manifest(tmp_path / "m.parquet", ["v"])
    output = tmp_path / "out"
    batch_flow(rows, str(output), model=str(tiny_model_dir))
    host, dead, live = storage.machine_id(), 999_999_999, os.getpid()
    frames = next((output / ".cache" / "artifacts").glob("frames"))
    results_tmp = Path(tempfile.gettempdir())
    made = {
        "dead temporary": output / f".tmp-aaaa.{dead}.{host}",
        "dead artifact temporary": frames / f".tmp-bbbb.{dead}.{host}",
        "dead staging": output / ".staging" / "v" / f"cccc.{dead}.{host}",
        "dead results folder": results_tmp / f"stillmotion-results-dddd.{dead}.{host}",
        "old temporary of another machine": output / ".logs" / ".tmp-eeee.1.elsewhere",
    }
    kept = {
        "live temporary": output / f".tmp-ffff.{live}.{host}",
        "live staging": output / ".staging" / "w" / f"gggg.{live}.{host}",
        "new temporary of another machine": frames / ".tmp-hhhh.1.elsewhere",
    }
    for name, path in {**made, **kept}.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if "staging" in name or "folder" in name else path.write_bytes(b"x" * 100)
    old = time.time() - 2 * storage.ABANDONED_AFTER_S
    os.utime(made["old temporary of another machine"], (old, old))

    (output / "v" / "metadata.json").unlink()
    assert batch_flow(rows, str(output), model=str(tiny_model_dir))["done"] == 1
    assert [name for name, path in made.items() if path.exists()] == []
    assert [name for name, path in kept.items() if not path.exists()] == []
    assert not (output / ".staging" / "v").exists()  # emptied, then removed
    for path in kept.values():
        path.rmdir() if path.is_dir() else path.unlink()


@pytest.fixture
def no_retry_waits():
    saved = list(stages.STORAGE_RETRY_DELAYS)
    stages.STORAGE_RETRY_DELAYS[:] = [0] * len(saved)  # the tasks hold this list: same retries, no wait
    yield len(saved)
    stages.STORAGE_RETRY_DELAYS[:] = saved


def unavailable(url: str) -> OSError:
    return OSError(errno.EBUSY, "Service Unavailable")  # what s3fs raises for a 503 / SlowDown


def test_a_storage_error_reading_an_image_names_the_file(monkeypatch):
    def failing_open(url, *args, **kwargs):
        raise unavailable(url)

    monkeypatch.setattr(fsspec, "open", failing_open)
    with pytest.raises(StorageError) as caught:
        single.read_bytes("s3://bucket/images/cat.png")
    assert str(caught.value) == "cannot read image s3://bucket/images/cat.png: Service Unavailable"
    assert is_transient(caught.value)
    assert not is_transient(ImageError("image not found: x.png"))
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "gone"))


def test_transient_storage_errors_are_retried_and_bad_input_is_not(
    tiny_model_dir, tmp_path, monkeypatch, no_retry_waits
):
    images = tmp_path / "images"
    images.mkdir()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
        images / "a.png"
    )
    rows = images / "m.parquet"
    common = {"caption": "a photo", "prompts": ["a dog"], **FAST}
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"video_id": "flaky", "image": "a.png", **common},
                {"video_id": "missing", "image": "nope.png", **common},
                {"video_id": "down", "image": "down.png", **common},
            ]
        ),
        rows,
    )
    (images / "down.png").write_bytes((images / "a.png").read_bytes())
    real_write, failures = storage.Store.write_bytes, Counter()

    def flaky_write(self, relative, data):
        if relative.startswith("keyframes/") and failures["keyframes"] < 2:
            failures["keyframes"] += 1
            raise unavailable(relative)
        return real_write(self, relative, data)

    real_read, reads = stages.read_bytes, Counter()

    def counted_read(url, *args, **kwargs):
        reads[Path(url).name] += 1
        if Path(url).name == "down.png":
            raise StorageError(errno.EBUSY, f"cannot read image {url}: Service Unavailable")
        return real_read(url, *args, **kwargs)

    monkeypatch.setattr(storage.Store, "write_bytes", flaky_write)
    monkeypatch.setattr(stages, "read_bytes", counted_read)
    before = COMPUTED.copy()
    batch_flow(str(rows), str(tmp_path / "out"), model=str(tiny_model_dir), in_flight=1)
    table = {r["video_id"]: r for r in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()}
    assert table["flaky"]["status"] == "ok" and failures["keyframes"] == 2
    assert (COMPUTED - before)["keyframes"] == 1  # the flaky write was retried, the others cached
    assert table["missing"]["status"] == "failed" and reads["nope.png"] == 1  # bad input: no retry
    assert table["down"]["status"] == "failed" and reads["down.png"] == 1 + no_retry_waits
    assert table["down"]["error"].endswith("down.png: Service Unavailable")


def test_cuda_out_of_memory_halves_the_batch_which_stays_out_of_the_keys(
    tiny_model_dir, tmp_path, monkeypatch
):
    rows, output = manifest(tmp_path / "m.parquet", ["v"]), tmp_path / "out"
    real, tried = stages.render_candidates, []

    def small_gpu(sd, noise, caption, prompts, params, synthetic, callback=None):
        tried.append(params.batch_size)
        if params.batch_size > 2:  # only two key frames at a time fit
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(sd, noise, caption, prompts, params, synthetic, callback)

    monkeypatch.setattr(stages, "render_candidates", small_gpu)
    assert batch_flow(rows, str(output), model=str(tiny_model_dir))["done"] == 1
    assert tried == [8, 4, 2]  # the row's batch (8), halved until it fit
    metadata = json.loads((output / "v" / "metadata.json").read_text())
    assert metadata["computed_with"]["keyframes"]["batch_size"] == 2

    # the same key frames at a batch of 1 (--batch-size): same numbers, so the same (cached) artifact
    shutil.rmtree(output / "v")
    before, tried[:] = COMPUTED.copy(), []
    assert batch_flow(rows, str(output), model=str(tiny_model_dir), batch_size=1)["done"] == 1
    assert COMPUTED == before and tried == []
    fresh = tmp_path / "fresh"
    batch_flow(rows, str(fresh), model=str(tiny_model_dir), batch_size=1)
    assert tried == [1]
    (cached,) = (output / ".cache" / "artifacts" / "keyframes").glob("*.safetensors")
    (recomputed,) = (fresh / ".cache" / "artifacts" / "keyframes").glob("*.safetensors")
    assert cached.name == recomputed.name
    torch.testing.assert_close(load_file(recomputed), load_file(cached), atol=1e-4, rtol=0)

    # out of memory at a batch of 1: the row fails with the reason
    monkeypatch.setattr(
        stages,
        "render_candidates",
        lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")),
    )
    shutil.rmtree(fresh)
    summary = batch_flow(rows, str(fresh), model=str(tiny_model_dir), batch_size=1)
    assert summary["failed"] == 1 and "out of memory" in summary["failures"][0]["error"]


def test_a_lease_is_one_live_processes_and_a_dead_holders_is_taken(tmp_path):
    for url in (str(tmp_path / "out"), "memory://lease-test"):
        store = storage.OutputStore(url)
        assert store.take_lease("a") and not store.take_lease("a")  # held by a live process (this one)
        store.release_lease("a")
        assert store.take_lease("a")
        store.release_lease("a")
    store = storage.OutputStore(str(tmp_path / "out"))
    (tmp_path / "out" / ".leases" / "b").write_text(f"dead.999999999.{storage.machine_id()}")
    assert store.take_lease("b")  # its holder is gone
    storage.leases._HELD_LEASES.clear()  # what an interrupted call in this process leaves: a lease naming us
    assert store.take_lease("b")  # ... that a later call here takes back rather than wait on itself
    (tmp_path / "out" / ".leases" / "b").write_text(f"other.{os.getppid()}.{storage.machine_id()}")
    store.release_lease("b")  # taken over by another process meanwhile: never deleted by us
    assert (tmp_path / "out" / ".leases" / "b").exists()


def test_a_run_removes_the_leases_killed_runs_left_and_no_live_ones(tmp_path):
    """A run killed between publishing a video and giving its row back leaves the lease; no later run
    takes it over (the row is complete), so the next run's clean-up removes it, and only such leases."""
    here, stale = storage.machine_id(), time.time() - 2 * storage.ABANDONED_AFTER_S
    for url in (str(tmp_path / "out"), "memory://lease-cleanup"):
        store = storage.OutputStore(url)
        assert store.clean_leftovers() == 0  # no .leases folder yet
        leases = {
            "dead": f"t.999999999.{here}",  # a process of this machine that is gone
            "live": f"t.{os.getppid()}.{here}",  # one that lives
            "far": "t.1.elsewhere",  # another machine's, touched just now
            "stale": "t.1.elsewhere",  # another machine's, untouched for two hours
        }
        for video_id, holder in leases.items():
            store.write_bytes(f".leases/{video_id}", holder.encode())
        if store.local:
            os.utime(store.path(".leases/stale"), (stale, stale))
        else:  # memory:// records a creation time alone
            store.fs.store[store.path(".leases/stale")].created = datetime.fromtimestamp(stale, timezone.utc)
        assert store.take_lease("mine")
        assert store.clean_leftovers() == 2
        assert {p.rsplit("/", 1)[-1] for p in store.fs.find(store.path(".leases"))} == {"live", "far", "mine"}
        store.release_lease("mine")


def test_held_leases_are_renewed_so_no_other_machine_takes_a_long_row(tmp_path, monkeypatch):
    store = storage.OutputStore(str(tmp_path / "out"))
    lease, stale = tmp_path / "out" / ".leases" / "a", time.time() - 2 * storage.ABANDONED_AFTER_S
    assert store.take_lease("a")
    here = storage.machine_id()

    def seen_from_another_machine():  # another machine's run (its own process: its own held leases)
        held = dict(storage.leases._HELD_LEASES)
        monkeypatch.setattr(storage.fs, "machine_id", lambda: "elsewhere")
        try:
            return storage.OutputStore(str(tmp_path / "out")).take_lease("a")
        finally:
            monkeypatch.setattr(storage.fs, "machine_id", lambda: here)
            storage.leases._HELD_LEASES.clear()
            storage.leases._HELD_LEASES.update(held)

    os.utime(lease, (stale, stale))  # a row still being made after hours: renewed, so kept
    assert store.renew_leases() == 1 and time.time() - lease.stat().st_mtime < 60
    assert not seen_from_another_machine()
    os.utime(lease, (stale, stale))  # not renewed (a holder cut off): the other machine takes it over
    assert seen_from_another_machine()
    taken = lease.read_text()
    assert store.renew_leases() == 0 and lease.read_text() == taken  # theirs now: never touched by us
    store.release_lease("a")
    assert lease.read_text() == taken

    memory = storage.OutputStore("memory://renew-test")  # an object store: renewed by writing it again
    assert memory.take_lease("b")
    created = memory.fs.info(memory.path(".leases/b"))["created"]
    time.sleep(0.01)
    assert memory.renew_leases() == 1 and memory.fs.info(memory.path(".leases/b"))["created"] > created
    memory.release_lease("b")
    assert memory.renew_leases() == 0 and not memory.fs.exists(memory.path(".leases/b"))  # not brought back

    monkeypatch.setattr(storage.leases, "LEASE_RENEW_S", 0.05)
    assert store.take_lease("c")
    os.utime(lease.with_name("c"), (stale, stale))
    with storage.LeaseKeeper(store):
        deadline = time.monotonic() + 10
        while lease.with_name("c").stat().st_mtime < time.time() - 60 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert time.time() - lease.with_name("c").stat().st_mtime < 60  # the keeper's thread renewed it
    store.release_lease("c")


def test_two_runs_on_one_output_split_the_work(tiny_model_dir, tmp_path, monkeypatch):
    import subprocess
    import threading

    monkeypatch.setattr("stillmotion.flows.batch.LEASE_POLL_S", 0.2)
    monkeypatch.setattr(storage.leases, "LEASE_RENEW_S", 0.1)
    renewed, renew = [], storage.OutputStore.renew_leases
    monkeypatch.setattr(storage.OutputStore, "renew_leases", lambda self: renewed.append(renew(self)) or 0)
    rows, model = manifest(tmp_path / "m.parquet", ["a", "b", "c"]), str(tiny_model_dir)
    reference, output = tmp_path / "reference", tmp_path / "out"
    batch_flow(rows, str(reference), model=model)  # what the other run makes of "c"
    # another run, alive, holds rows a and c
    holders = {name: subprocess.Popen(["sleep", "120"]) for name in ("a", "c")}
    (output / ".leases").mkdir(parents=True)
    for name, holder in holders.items():
        (output / ".leases" / name).write_text(f"other.{holder.pid}.{storage.machine_id()}")
    before, summary = COMPUTED.copy(), {}
    run = threading.Thread(target=lambda: summary.update(batch_flow(rows, str(output), model=model)))
    run.start()
    try:
        deadline = time.monotonic() + 120
        while not (output / "b" / "metadata.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        assert run.is_alive() and not (output / "a").exists()  # b made; a and c left to their holder
        shutil.copytree(reference / "c", output / ".c-copy")
        os.replace(output / ".c-copy", output / "c")  # the other run publishes c ...
        holders["a"].kill()  # ... and dies before making a
        holders["a"].wait()
        run.join(timeout=120)
    finally:
        for holder in holders.values():
            holder.kill()
    assert not run.is_alive()
    assert (summary["done"], summary["cached"], summary["failed"]) == (2, 1, 0)
    assert (COMPUTED - before)["keyframes"] == 2  # a and b here; c by the other run, never twice
    table = {r["video_id"]: r for r in pq.read_table(output / "results.parquet").to_pylist()}
    assert [table[v]["cached"] for v in "abc"] == [False, False, True]
    assert sorted(p.name for p in (output / ".leases").iterdir()) == ["c"]  # only the live holder's
    assert max(renewed) >= 1  # the run renewed the leases it held while it made its rows


def test_failed_rows_are_listed_on_the_terminal(tiny_model_dir, tmp_path, capsys):
    rows = tmp_path / "m.parquet"
    common = {"prompts": ["a blue car"], "source_prompt": "a red car", **FAST}
    pq.write_table(
        pa.Table.from_pylist([{"video_id": "ok", **common}, {"video_id": "bad id", **common}]), rows
    )
    output = tmp_path / "out"
    assert (
        main(["run", str(rows), "--output", str(output), "--model", str(tiny_model_dir), "--no-progress"])
        == 3
    )
    err = capsys.readouterr().err
    assert "failed: 'bad id' (row 1): video_id:" in err
    assert "1 failed rows: see" in err and ".logs/" not in err  # a manifest error writes no log


def test_the_embedded_server_start_is_retried_and_a_lost_port_is_not_taken_for_ours(monkeypatch):
    import subprocess

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from stillmotion.cli import signals

    base, detached = signals._detached_server_class()
    assert 0 < detached().find_available_port() < 65536 and base._instances.pop(None, None)
    attempts = []

    def start(self, timeout=None):  # 1: answered by another server, ours exited; 2: timed out; 3: up
        attempts.append(self.port)
        if len(attempts) == 1:
            self.server_process = subprocess.Popen(["true"])
            self.server_process.wait()
        elif len(attempts) == 2:
            raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")
        else:
            self.server_process = subprocess.Popen(["sleep", "30"])

    monkeypatch.setattr(base, "start", start)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        server = signals.start_detached_server()
        try:
            assert len(attempts) == 3 and server.server_process.poll() is None
        finally:
            signals.stop_server(server)
        assert None not in base._instances

        attempts.clear()
        monkeypatch.setattr(
            base, "start", lambda self, timeout=None: (_ for _ in ()).throw(RuntimeError("boom"))
        )
        with pytest.raises(signals.ServerStartError, match=r"\(3 tries\): boom; set PREFECT_API_URL"):
            signals.start_detached_server()
        assert None not in base._instances


def test_a_prefect_conflict_is_tried_again_then_is_one_line(monkeypatch, tmp_path, capsys):
    """Prefect's API answering 409 Conflict (two processes writing one SQLite database once failed a
    flow run's FOREIGN KEY check): the run is tried again, which resumes it; a third is one line."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    from stillmotion import flows
    from stillmotion.cli import build_parser, commands
    from stillmotion.flows.tracking import RunError

    request = httpx.Request("POST", "http://127.0.0.1/api/flow_runs/")
    response = httpx.Response(409, request=request, json={"detail": "Data integrity conflict."})
    conflict = PrefectHTTPStatusError.from_httpx_error(
        httpx.HTTPStatusError("409 Conflict", request=request, response=response)
    )
    calls, summary = [], {"rows": 1, "done": 1, "cached": 0, "failed": 0, "seconds": 0.1}

    class Flow:  # the batch flow, failing its first `fails` calls as Prefect's engine reports it
        task_runner = None

        def __init__(self, fails: int, error: BaseException):
            self.fails, self.error = fails, error

        def __call__(self, **parameters):
            calls.append(parameters)
            if len(calls) <= self.fails:
                raise RuntimeError("the flow run could not be created") from self.error
            return summary

    monkeypatch.setattr(commands, "PREFECT_CONFLICT_WAIT_S", 0)
    args = build_parser().parse_args(["run", str(tmp_path / "m.parquet"), "--output", str(tmp_path / "out")])
    monkeypatch.setattr(flows, "batch_flow", Flow(2, conflict))
    assert commands._run(args, None) == 0 and len(calls) == 3
    assert capsys.readouterr().err.count("answered 409 Conflict; trying again") == 2
    calls.clear()
    monkeypatch.setattr(flows, "batch_flow", Flow(3, conflict))
    with pytest.raises(RunError, match="409 Conflict.*PREFECT_API_URL"):
        commands._run(args, None)
    assert len(calls) == 3
    calls.clear()
    monkeypatch.setattr(flows, "batch_flow", Flow(1, OSError("disk full")))
    with pytest.raises(RuntimeError):  # any other error is not tried again
        commands._run(args, None)
    assert len(calls) == 1


def test_a_lease_not_renewed_for_a_few_periods_is_taken_over_in_minutes(tmp_path, monkeypatch):
    """Another machine's lease counts as abandoned once not renewed for LEASE_STALE_S (minutes, not the
    hour after which temporary files are cleaned), by the store's clock; a renewed one is kept."""
    from stillmotion.storage.leases import LEASE_RENEW_S, LEASE_STALE_S

    assert LEASE_STALE_S <= 10 * 60 and LEASE_STALE_S >= 3 * LEASE_RENEW_S
    assert LEASE_STALE_S < storage.ABANDONED_AFTER_S
    store = storage.OutputStore(str(tmp_path / "out"))
    lease = tmp_path / "out" / ".leases" / "r"
    lease.parent.mkdir(parents=True)
    lease.write_text("dead0000.4242.another-machine")  # a run on a machine that died
    for age, taken in ((LEASE_STALE_S - 60, False), (LEASE_STALE_S + 5, True)):
        os.utime(lease, (time.time() - age, time.time() - age))
        assert store.take_lease("r") is taken, age
    store.release_lease("r")

    # on an object store the age is judged by the store's clock: a store 2 hours ahead of this machine
    # makes a lease it stamped a minute ago a minute old, not two hours younger than now
    memory = storage.OutputStore("memory://clock-test")
    leases = memory.leases
    real_info = memory.fs.info

    def info_ahead(path, **kwargs):
        found = dict(real_info(path, **kwargs))
        found["created"] = found["created"] + timedelta(hours=2)
        return found

    monkeypatch.setattr(memory.fs, "info", info_ahead)
    memory.fs.pipe_file(memory.path(".leases/s"), b"dead0000.4242.another-machine")
    assert not leases.abandoned("dead0000.4242.another-machine", time.time() + 2 * 3600 - 60)
    assert leases.abandoned("dead0000.4242.another-machine", time.time() + 2 * 3600 - LEASE_STALE_S - 60)
