"""Stop a real `stillmotion run` as a terminal's Ctrl-C or a scheduler's stop does (the signal sent to the
whole process group): it exits within seconds with one line, 130 / 143, results.parquet written for the
rows that finished and no Prefect server left behind; the rerun finishes without recomputing them."""

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
    lines = stderr.strip().splitlines()
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
