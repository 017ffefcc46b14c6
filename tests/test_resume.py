"""Kill a real `stillmotion run` with SIGKILL mid-run; the rerun finishes without recomputing."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 6


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every artifact: an atomic rewrite changes both."""
    return {
        str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def run(args, env, **kwargs):
    exe = Path(sys.executable).parent / "stillmotion"
    return subprocess.Popen([str(exe), "run", *args], env=env, start_new_session=True, **kwargs)


def test_sigkill_mid_run_then_resume(tiny_model_dir, tmp_path):
    images = tmp_path / "inputs"
    images.mkdir()
    for i in range(ROWS):
        rng = np.random.default_rng(i)
        PIL.Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    table = pa.table(
        {
            "video_id": [f"v{i}" for i in range(ROWS)],
            "image": [f"{i}.png" for i in range(ROWS)],
            "caption": ["a photo"] * ROWS,
            "prompts": [["a dog", "a cat"]] * ROWS,
            "steps": [12] * ROWS,
            "keyframes": [2] * ROWS,
        }
    )
    manifest = images / "manifest.parquet"
    pq.write_table(table, manifest)
    output = tmp_path / "out"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": ""}
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

    # 1. start, wait for two published videos, kill the whole process group
    process = run(args, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(list(output.glob("v*/metadata.json"))) < 2:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no video was published in time"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = {p.parent.name for p in output.glob("v*/metadata.json")}
    assert 2 <= len(finished) < ROWS, "the kill came too late to test resuming"
    visible = {p.name for p in output.iterdir() if p.name.startswith("v")}
    assert visible == finished  # no incomplete video folder is ever visible
    artifacts = snapshot(output / ".cache" / "artifacts")
    assert artifacts

    # 2. the rerun completes every row and rewrites no finished artifact
    rerun = run(args, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert [r["status"] for r in results] == ["ok"] * ROWS
    assert {r["video_id"] for r in results if r["cached"]} == finished
    after = snapshot(output / ".cache" / "artifacts")
    assert {name: after[name] for name in artifacts} == artifacts
    assert len(after) > len(artifacts)  # the unfinished rows were computed
    assert all((output / f"v{i}" / "video.mp4").exists() for i in range(ROWS))
