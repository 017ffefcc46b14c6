"""Static splits: rows per second for 1 and 2 `stillmotion run --num-shards` processes, and the cost of
`stillmotion merge` at 10,000 rows.

    .venv/bin/python benchmarks/split.py --rows 60 --merge-rows 10000 --workdir /tmp/split

1. Throughput: one plain run of ROWS cheapest synthetic rows (1 key frame, 1 frame, 1 step), then the
   same manifest on a fresh output as 2 processes (`--num-shards 2 --shard-index 0|1`, started together,
   each its own embedded Prefect server) and a merge; wall time of each from the first start to the last
   exit. On a 2-core machine two processes share the cores: this measures the orchestration's share, not
   a second GPU.
2. Merge: MERGE_ROWS rows made complete without a cold run (one video's files under every id, each id
   its own metadata.json and fingerprint, as benchmarks/orchestration.py does), split into 2 parts by
   two cached `--num-shards 2` runs; then `stillmotion merge` timed alone (target <= 10 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from orchestration import cli, clone_outputs, write_manifest  # this folder: first on a script's path

MERGE_TARGET_S = 10.0


def run_all(commands: list[list[str]], env: dict) -> float:
    """Start every command at once; the seconds until the last one exits (each must exit 0)."""
    started = time.monotonic()
    processes = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in commands
    ]
    for process in processes:
        output = process.communicate()[0].decode(errors="replace")
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(commands[0][:3])} failed:\n{output[-2000:]}")
    return round(time.monotonic() - started, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60, help="rows of the throughput runs (60)")
    parser.add_argument("--merge-rows", type=int, default=10_000, help="rows merged (10,000)")
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny-model"
    if not (model / "model_index.json").exists():
        subprocess.run([*cli(), "make-tiny-model", str(model)], check=True, stdout=subprocess.DEVNULL)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base |= {
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    result: dict = {"rows": args.rows, "merge_rows": args.merge_rows}

    # 1. throughput, 1 process and 2
    manifest = write_manifest(work / "throughput", args.rows, "synthetic")
    for processes in (1, 2):
        output = work / f"out-{processes}"
        shutil.rmtree(output, ignore_errors=True)
        common = [
            *cli(),
            "run",
            str(manifest),
            "--output",
            str(output),
            "--model",
            str(model),
            "--no-progress",
        ]
        env = {**base, "PREFECT_HOME": str(work / f"home-{processes}")}
        if processes == 1:
            seconds = run_all([common], env)
        else:
            seconds = run_all(
                [[*common, "--num-shards", "2", "--shard-index", str(k)] for k in range(2)], env
            )
            seconds += run_all([[*cli(), "merge", str(output)]], env)
        result[f"processes_{processes}"] = {"wall_s": seconds, "rows_per_s": round(args.rows / seconds, 3)}
        print(json.dumps(result), flush=True)

    # 2. merge of MERGE_ROWS rows in 2 parts
    case = work / f"merge-{args.merge_rows}"
    manifest, output = write_manifest(case, args.merge_rows, "synthetic"), case / "out"
    env = {**base, "PREFECT_HOME": str(case / "home")}
    if not output.exists():
        seed = write_manifest(case / "seed", 4, "synthetic")
        run_all(
            [[*cli(), "run", str(seed), "--output", str(output), "--model", str(model), "--no-progress"]], env
        )
        clone_outputs(output, manifest, model)
    common = [*cli(), "run", str(manifest), "--output", str(output), "--model", str(model), "--no-progress"]
    result["parts_s"] = run_all(
        [[*common, "--num-shards", "2", "--shard-index", str(k)] for k in range(2)], env
    )
    result["merge_s"] = run_all([[*cli(), "merge", str(output)]], env)
    ok = result["merge_s"] <= MERGE_TARGET_S
    print(json.dumps(result, indent=1))
    print(
        f"merge of {args.merge_rows:,} rows: {result['merge_s']} s (target <= {MERGE_TARGET_S:g} s): "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
