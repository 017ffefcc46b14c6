"""What `--format webdataset` adds: the packing of shards, timed alone and within cold runs.

    .venv/bin/python benchmarks/shards.py --rows 1000 --rows 10000 --cold-rows 40 --json /tmp/shards.json

1. Packing alone, in a subprocess per row count: one real toy video's folder (made by `stillmotion run`)
   hard-linked under N ids in CACHE/rows, then stillmotion.shards.ShardWriter packs the N rows into
   shards of --shard-size, as a run does: seconds per row and the process's peak RSS.
2. Cold runs of --cold-rows rows of the real CLI (tiny model, cheapest settings, fresh outputs and one
   warmed PREFECT_HOME), files then webdataset, alternating, --repeats times: wall time of each.
Target (issue 17): packing adds <= 5% to a cold run's wall time on the toy model at 1,000 rows; a
10,000-row run's peak RSS within 1.2x that of the files format.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]

PACK = """
import json, os, resource, sys, time
from stillmotion.flows.tracking import RunTracker
from stillmotion.storage import OutputStore
rows_url, output_url, rows, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
videos, outputs = OutputStore(rows_url), OutputStore(output_url)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracker = RunTracker(outputs, rows, [], show_progress=False, rows=videos, shard_size=size)
start = time.perf_counter()
for row in range(rows):
    tracker.add(row, f"v{row:06d}", {}, status="ok", seconds=1.0, prompts=["a blue circle"])
packing = time.perf_counter() - start
tracker.close()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
shards = tracker.shards.packed
print(json.dumps({"pack_s": packing, "shards": shards, "rss_before_kb": before, "rss_peak_kb": peak}))
"""


def cli() -> list[str]:
    return [str(Path(sys.executable).parent / "stillmotion")]


def manifest(folder: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "video_id": [f"v{i:06d}" for i in range(rows)],
            "source_prompt": ["a red circle"] * rows,
            "prompts": [["a blue circle"]] * rows,
            "keyframes": [1] * rows,
            "frames": [1] * rows,
            "steps": [1] * rows,
        }
    )
    pq.write_table(table, folder / "manifest.parquet")
    return folder / "manifest.parquet"


def run(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([*cli(), "run", *args, "--no-progress"], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def pack_alone(work: Path, seed_folder: Path, rows: int, size: int, env: dict) -> dict:
    case = work / f"pack-{rows}"
    shutil.rmtree(case, ignore_errors=True)
    for i in range(rows):
        target = case / "rows" / f"v{i:06d}"
        target.mkdir(parents=True)
        for name in ("video.mp4", "metadata.json", "preview.png"):
            os.link(seed_folder / name, target / name)
    done = subprocess.run(
        [sys.executable, "-c", PACK, str(case / "rows"), str(case / "out"), str(rows), str(size)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rows"], result["pack_ms_per_row"] = rows, round(1000 * result["pack_s"] / rows, 3)
    shutil.rmtree(case)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append", help="rows packed alone (default 1000, 10000)")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--cold-rows", type=int, default=40, help="rows of each cold run (0: none)")
    parser.add_argument("--repeats", type=int, default=2, help="cold runs per format")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stillmotion-shards-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(work / "prefect-home"), "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    env["PYTHONPATH"] = str(REPO / "src")
    model = work / "tiny-model"
    if not model.exists():
        subprocess.run([*cli(), "make-tiny-model", str(model)], env=env, check=True, capture_output=True)
    seed = manifest(work / "seed", 1)
    run([str(seed), "--output", str(work / "seed-out"), "--model", str(model), "--format", "webdataset"], env)
    seed_folder = work / "seed-out" / ".cache" / "rows" / "v000000"

    results: dict = {
        "pack": [pack_alone(work, seed_folder, n, args.shard_size, env) for n in args.rows or [1000, 10000]]
    }
    if args.cold_rows:
        cold = manifest(work / "cold", args.cold_rows)
        walls: dict[str, list[float]] = {"files": [], "webdataset": []}
        for repeat in range(args.repeats):
            for name in ("files", "webdataset"):
                out = work / f"cold-{name}-{repeat}"
                shutil.rmtree(out, ignore_errors=True)
                options = ["--format", name, "--shard-size", str(max(1, args.cold_rows // 4))]
                walls[name].append(
                    run([str(cold), "--output", str(out), "--model", str(model), *options], env)
                )
                shutil.rmtree(out)
        results["cold"] = {
            "rows": args.cold_rows,
            "walls_s": walls,
            "median_s": {name: round(statistics.median(w), 2) for name, w in walls.items()},
        }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
