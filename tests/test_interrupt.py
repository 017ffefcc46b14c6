"""Stop a real `stillmotion run` as a terminal's Ctrl-C or a scheduler's stop does (the signal sent to the
whole process group): it exits within seconds with one line, 130 / 143, results.parquet written for the
rows that finished and no Prefect server left behind; the rerun finishes without recomputing them."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROWS = 3
EXIT_WITHIN = 20.0  # seconds from the signal to the exit (measured: ~2 s on a 2-core machine)


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    """One PREFECT_HOME for the module: the embedded server's database is migrated once, not per run."""
    return tmp_path_factory.mktemp("prefect-home")


def make_manifest(folder: Path) -> Path:
    folder.mkdir()
    for i in range(ROWS):
        rng = np.random.default_rng(i)
        PIL.Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    table = pa.table(
        {
            "video_id": [f"v{i}" for i in range(ROWS)],
            "image": [f"{i}.png" for i in range(ROWS)],
            "caption": ["a photo"] * ROWS,
            "prompts": [["a dog", "a cat"]] * ROWS,
            "steps": [4] * ROWS,
            "keyframes": [2] * ROWS,
        }
    )
    pq.write_table(table, folder / "manifest.parquet")
    return folder / "manifest.parquet"


def run(args, env):
    exe = Path(sys.executable).parent / "stillmotion"
    return subprocess.Popen(
        [str(exe), "run", *args],
        env=env,
        start_new_session=True,  # its own process group, signalled as a whole below
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stamps(output: Path, ids) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each finished video's files: a rewrite changes both."""
    return {
        str(p.relative_to(output)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for video_id in ids
        for p in (output / video_id).iterdir()
    }


@pytest.mark.parametrize(
    "signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_signal_stops_run_at_once_then_rerun_resumes(tiny_model_dir, tmp_path, prefect_home, signum, status):
    manifest = make_manifest(tmp_path / "inputs")
    output = tmp_path / "out"
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": ""}
    args = [
        str(manifest),
        "--output",
        str(output),
        "--model",
        str(tiny_model_dir),
        "--no-progress",
        "--in-flight",
        "1",
    ]

    # 1. start; once one video is published (others still to do), signal the whole process group
    process = run(args, env)
    try:
        deadline = time.monotonic() + 240
        while not list(output.glob("v*/metadata.json")):
            assert process.poll() is None, (
                f"the run ended before it could be stopped: {process.communicate()}"
            )
            assert time.monotonic() < deadline, "no video was published in time"
            time.sleep(0.05)
        children = psutil.Process(process.pid).children(recursive=True)
        assert any("uvicorn" in " ".join(child.cmdline()) for child in children), "no embedded server seen"
        signalled = time.monotonic()
        os.killpg(process.pid, signum)
        stdout, stderr = process.communicate(timeout=120)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    # 2. within seconds, the exit status of the signal and one line: no traceback, no Prefect dump
    assert process.returncode == status, stderr
    assert took <= EXIT_WITHIN, f"took {took:.1f} s from {signum.name} to the exit"
    print(f"{signum.name}: exited {process.returncode} {took:.1f} s after the signal")
    assert "Traceback" not in stderr and "Traceback" not in stdout
    # besides what start-up says (one line a step) and the notes on prompts the tiny model cannot read
    said = ("stillmotion run: loading", "stillmotion run: starting", "stillmotion run: making")
    lines = [
        line
        for line in stderr.strip().splitlines()
        if not line.startswith(said) and not (line.startswith("stillmotion: v") and ": prompt " in line)
    ]
    assert len(lines) <= 2, stderr
    assert f"interrupted ({signum.name})" in lines[-1] and "run again to resume" in lines[-1], stderr

    # 3. results.parquet lists every video that is complete as ok; some rows were left to do
    finished = {p.parent.name for p in output.glob("v*/metadata.json")}
    assert 1 <= len(finished) < ROWS, "the signal came too late to test resuming"
    assert f"{len(finished)} rows finished" in lines[-1], stderr
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert {r["video_id"] for r in results if r["status"] == "ok"} == finished
    assert all(r["status"] == "ok" for r in results)

    # 4. no Prefect server (nor any other child) outlives the run
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"

    # 5. the rerun makes the other rows, and takes the finished ones as they are
    before = stamps(output, finished)
    rerun = run(args, env)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert [r["status"] for r in results] == ["ok"] * ROWS
    assert {r["video_id"] for r in results if r["cached"]} == finished
    assert stamps(output, finished) == before
    assert all((output / f"v{i}" / "video.mp4").exists() for i in range(ROWS))


# `stillmotion run`, paused (SIGSTOP, by itself) halfway through publishing: one file of the video in
# its staging folder, the rest not yet written
PAUSED_MID_PUBLISH = """
import os, signal, sys, threading
from stillmotion import storage
from stillmotion.cli import main

write_folder = storage.OutputStore.write_folder

def paused(self, folder, files, metadata):
    if folder.startswith(".staging/"):
        first = next(iter(files))
        self.write_bytes(f"{folder}/{first}", files[first])
        # to this thread: a stop sent to the process may be taken by another thread, and this one
        # would go on writing until the group stop reaches it
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
    write_folder(self, folder, files, metadata)

storage.OutputStore.write_folder = paused
sys.exit(main(["run", *sys.argv[1:]]))
"""


def stopped(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


def test_a_second_run_leaves_a_paused_runs_staging_alone_and_splits_the_work(
    tiny_model_dir, tmp_path, prefect_home
):
    """Two processes on one output: the second neither deletes the first's staging folder (paused,
    not dead) nor makes the row it holds; it makes the row nobody holds, and records the first's once
    that one, resumed, has published it whole."""
    manifest = make_manifest(tmp_path / "inputs")
    output = tmp_path / "out"
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": ""}
    args = [str(manifest), "--output", str(output), "--model", str(tiny_model_dir), "--no-progress"]
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSED_MID_PUBLISH, *args, "--in-flight", "1", "--limit", "2"],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    second = None
    try:
        deadline = time.monotonic() + 240
        while not stopped(first.pid):
            assert first.poll() is None, f"the first run ended unpaused: {first.communicate()}"
            assert time.monotonic() < deadline, "the first run never reached its publish"
            time.sleep(0.05)
        (staging,) = (output / ".staging" / "v0").iterdir()
        names = [path.name for path in staging.iterdir()]
        assert names == ["video.mp4"], names  # halfway: one file of the video in place
        second = run([*args, "--limit", "2"], env)
        deadline = time.monotonic() + 240
        while not (output / "v1" / "metadata.json").exists():
            assert second.poll() is None, f"the second run ended early: {second.communicate()}"
            assert time.monotonic() < deadline, "the second run did not make v1"
            time.sleep(0.1)
        time.sleep(3)  # a poll of the row the paused run holds, at least
        assert second.poll() is None  # waiting for v0, which it neither deletes nor makes
        assert len(list(staging.iterdir())) == 1 and not (output / "v0").exists()
        os.kill(first.pid, signal.SIGCONT)
        outs = [process.communicate(timeout=240) for process in (first, second)]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert (first.returncode, second.returncode) == (0, 0), outs
    # each run made one video and took the other as made: nothing computed twice
    for stdout, stderr in outs:
        assert "2 rows: 1 made, 1 already complete" in stdout + stderr, (stdout, stderr)
    for video_id in ("v0", "v1"):  # both whole: every file metadata.json names, as it was hashed
        hashes = json.loads((output / video_id / "metadata.json").read_text())["hashes"]
        assert "video.mp4" in hashes
        for name, digest in hashes.items():
            assert hashlib.sha256((output / video_id / name).read_bytes()).hexdigest() == digest, name
    assert not (output / ".staging").exists() or not any((output / ".staging").rglob("*"))
