"""Orchestration benchmark: N-row manifests through the real `stillmotion run` with the cheapest settings.

    .venv/bin/python benchmarks/orchestration.py --rows 1000 --mode both --json /tmp/orch.json

Per row count: a tiny model, a manifest (keyframes 1, frames 1, steps 1), a fresh PREFECT_HOME
(embedded server, SQLite) initialised by a 1-row warm-up, then the cold run and the cached rerun of
the real CLI as a subprocess: wall time, exit status, peak RSS of the CLI and of its process tree
(psutil, every 0.2 s), Prefect database growth, overhead per row, Prefect's own task-run timings.
A rerun with no finished output (or whose cold run is skipped by --max-cold-minutes) runs on one
finished video's files hard-linked under every id, each id with its own metadata.json holding its own
row fingerprint: the rerun checks every row's fingerprint (and the image's size and mtime) as after a
cold run. Targets: cached rerun of 1,000 rows <= 5 s and of 10,000 rows <= 10 s; peak RSS at 10,000
rows <= 1.2x that at 1,000 rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RERUN_TARGETS_S, RSS_TARGET_RATIO = {1000: 5.0, 10000: 10.0}, 1.2
SUMMARY = re.compile(r"(\d+) rows: (\d+) made, (\d+) already complete, (\d+) failed in ([\d.]+) s")


def cli() -> list[str]:
    script = Path(sys.executable).parent / "stillmotion"
    return [str(script)] if script.exists() else [sys.executable, "-m", "stillmotion.cli"]


def write_manifest(folder: Path, rows: int, variant: str) -> Path:
    """Cheapest rows: one prompt, 1 key frame, 1 frame, 1 step; `real` reuses 4 small PNGs with a caption."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = {"video_id": [f"v{i:06d}" for i in range(rows)]}
    if variant == "real":
        rng = np.random.default_rng(0)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        columns |= {"image": [f"img{i % 4}.png" for i in range(rows)], "caption": ["a photo"] * rows}
    else:
        columns["source_prompt"] = ["a red circle"] * rows
    columns |= {"prompts": [["a blue circle"]] * rows, "keyframes": [1] * rows}
    columns |= {"frames": [1] * rows, "steps": [1] * rows}
    path = folder / "manifest.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def measure(command: list[str], env: dict, output: Path, rows: int, quarters: bool) -> dict:
    """Run one command; poll its RSS and its children's; note the peak as each quarter of rows is done."""
    start = time.monotonic()
    # its output goes to a file: a pipe read only at the end blocks a process that writes more than 64 KB
    output_log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(command, env=env, stdout=output_log, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peak_cli = peak_tree = cli_rss = 0
    by_quarter, by_child, last_count, forks_seen = {}, {}, 0.0, 0
    while proc.poll() is None:
        try:
            cli_rss, cli_cmd = root.memory_info().rss, root.cmdline()
            children = {}
            for child in root.children(recursive=True):
                # a child caught between fork and exec (each ffmpeg spawn) still is the CLI's memory,
                # shared: its RSS reads as the CLI's, and counting it doubles the tree
                if child.cmdline() == cli_cmd:
                    forks_seen += 1
                    continue
                children[child.name()] = child.memory_info().rss
        except psutil.Error:  # exited, or a child vanished between listing and reading
            children = {}
        for name, rss in children.items():
            by_child[name] = max(by_child.get(name, 0), rss)
        peak_cli, peak_tree = max(peak_cli, cli_rss), max(peak_tree, cli_rss + sum(children.values()))
        if quarters and time.monotonic() - last_count > 2 and output.exists():
            last_count, done = time.monotonic(), sum(1 for _ in output.glob("*/metadata.json"))
            for q in (25, 50, 75, 100):
                if done * 100 >= q * rows and q not in by_quarter:
                    by_quarter[q] = round(peak_tree / 2**20, 1)
        time.sleep(0.2)
    wall = time.monotonic() - start
    output_log.seek(0)
    log = output_log.read()
    output_log.close()
    counts = SUMMARY.search(log)
    return {
        "wall_s": round(wall, 2),
        "rc": proc.returncode,
        "made_cached_failed": [int(x) for x in counts.groups()[1:4]] if counts else None,
        "flow_s": float(counts.group(5)) if counts else None,  # the flow's own count: rows in to results out
        "peak_rss_cli_mb": round(peak_cli / 2**20, 1),
        "peak_rss_tree_mb": round(peak_tree / 2**20, 1),
        "peak_rss_children_mb": {name: round(v / 2**20, 1) for name, v in by_child.items()},
        "peak_tree_mb_at_rows_pct": by_quarter,
        "unexeced_forks_skipped": forks_seen,
        "log_tail": log[-600:] if proc.returncode else log.strip().splitlines()[-1:],
    }


def db_stats(home: Path) -> dict:
    """Prefect's SQLite database: raw size (db + wal), size after a WAL checkpoint, row counts, and the
    bytes each table takes with its indexes (SQLite's dbstat; free pages apart)."""
    db = home / "prefect.db"
    if not db.exists():
        return {"raw_bytes": 0, "bytes": 0, "task_runs": 0, "events": 0, "tables": {}}
    raw = sum(p.stat().st_size for p in (db, home / "prefect.db-wal") if p.exists())
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("task_run", "events")}
        tables = dict(
            con.execute(
                "SELECT coalesce(m.tbl_name, d.name), sum(d.pgsize) FROM dbstat d"
                " LEFT JOIN sqlite_master m ON m.name = d.name GROUP BY 1"
            ).fetchall()
        )
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        tables["(free pages)"] = con.execute("PRAGMA freelist_count").fetchone()[0] * page_size
    return {
        "raw_bytes": raw,
        "bytes": db.stat().st_size,
        "task_runs": counts["task_run"],
        **counts,
        "tables": tables,
    }


def table_growth(before: dict, after: dict, rows: int) -> dict:
    """KB per row that each table (with its indexes) grew by, largest first; those under 0.05 left out."""
    growth = {
        name: round((size - before["tables"].get(name, 0)) / 1024 / rows, 2)
        for name, size in after["tables"].items()
    }
    return dict(sorted(((k, v) for k, v in growth.items() if abs(v) >= 0.05), key=lambda kv: -kv[1]))


def task_timings(home: Path) -> dict:
    """Prefect's own timings of the last batch run (its chunk subflows): mean Running ms per stage, and the
    gaps between task runs.

    in_row_gap_ms: a task's start minus the end of the previous task of its row (the hand-off);
    between_rows_gap_ms: a row's first start minus the previous row's last end (meaningful at --in-flight 1).
    """
    query = (
        "SELECT name, start_time, end_time, total_run_time FROM task_run WHERE start_time IS NOT NULL"
        " AND flow_run_id IN (SELECT chunk.id FROM flow_run chunk JOIN task_run parent"
        " ON chunk.parent_task_run_id = parent.id WHERE parent.flow_run_id ="
        " (SELECT id FROM flow_run WHERE parent_task_run_id IS NULL ORDER BY created DESC LIMIT 1))"
    )
    with sqlite3.connect(home / "prefect.db") as con:
        records = con.execute(query).fetchall()

    def seconds(text: str) -> float:
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()

    stages: dict[str, list[float]] = {}
    chains: dict[str, list[tuple[float, float]]] = {}
    for name, start, end, run in records:
        stage, video_id = name.split("-", 1)
        stages.setdefault(stage, []).append(seconds(run))
        chains.setdefault(video_id, []).append((seconds(start), seconds(end)))
    chains = {k: sorted(v) for k, v in chains.items()}
    in_row = [b[0] - a[1] for c in chains.values() for a, b in zip(c, c[1:], strict=False)]
    spans = sorted((c[0][0], max(e for _, e in c)) for c in chains.values())
    between = [b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False)]

    def ms(values: list[float]) -> float | None:
        return round(1000 * sum(values) / len(values), 1) if values else None

    return {
        "run_ms": {stage: ms(v) for stage, v in sorted(stages.items())},
        "in_row_gap_ms": ms(in_row),
        "between_rows_gap_ms": ms(between),
    }


def compute_seconds(output: Path) -> dict:
    """Sum of the per-stage compute timings recorded in every metadata.json."""
    totals: dict[str, float] = {}
    for path in output.glob("*/metadata.json"):
        for stage, seconds in json.loads(path.read_text())["timings"].items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return {k: round(v, 2) for k, v in totals.items()}


def clone_outputs(output: Path, manifest: Path, model: Path) -> None:
    """Make every row complete without a cold run: each missing id gets the first finished folder's files
    hard-linked, and every id a metadata.json of its own (never a hard link), with its id and its own row
    fingerprint (computed by the run's own code), so the rerun checks every row's fingerprint as it would
    after a cold run."""
    from stillmotion.flows.lookup import RowLookup
    from stillmotion.manifests import iter_manifest
    from stillmotion.models.identity import inspect_model
    from stillmotion.storage import OutputStore

    first = next(output.glob("*/metadata.json")).parent
    template = json.loads((first / "metadata.json").read_text())
    lookup = RowLookup(OutputStore(str(output)), inspect_model(str(model)))
    rows = [row for row in iter_manifest(str(manifest)) if row.error is None]
    for start in range(0, len(rows), 1000):
        batch = rows[start : start + 1000]
        for row, (request, _, fingerprint) in zip(
            batch, lookup.fingerprints([row.request for row in batch]), strict=True
        ):
            target = output / row.video_id
            if not target.exists():  # the seed run's own rows (made from its own images) are stamped too
                skip = shutil.ignore_patterns("metadata.json")
                shutil.copytree(first, target, copy_function=os.link, ignore=skip)
            metadata = {**template, "video_id": row.video_id, "prompts": list(request.prompts)}
            metadata["fingerprint"] = fingerprint
            (target / "metadata.json").write_text(json.dumps(metadata, indent=2))


def run_case(rows: int, variant: str, args: argparse.Namespace, model: Path, earlier: list[dict]) -> dict:
    mode, in_flight, workdir = args.mode, args.in_flight, args.workdir
    label = variant if in_flight is None else f"{variant}, in-flight {in_flight}"
    case = workdir / (f"{variant}-{rows}" + ("" if in_flight is None else f"-if{in_flight}"))
    manifest, output, home = write_manifest(case, rows, variant), case / "out", case / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    env |= dict(item.split("=", 1) for item in args.env or [])  # e.g. a Prefect setting under test
    # a busy 2-core machine (or a run under `nice`) starts the embedded server slowly
    startup = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = startup
    options = [
        "--model",
        str(model),
        "--no-progress",
        *(["--in-flight", str(in_flight)] if in_flight else []),
    ]

    def command(man: Path, out: Path) -> list[str]:
        return [*cli(), "run", str(man), "--output", str(out), *options]

    shown = "".join(f"{item} " for item in args.env or [])
    shown += f"stillmotion run {case.name}/manifest.parquet --output {case.name}/out "
    shown += " ".join(options).replace(str(model), "tiny-model")
    result: dict = {"rows": rows, "variant": label, "command": shown}
    if not (home / "prefect.db").exists():  # warm-up: creates the database, so growth is per row
        warm = write_manifest(case / "warmup", 1, variant)
        result["warmup"] = measure(
            command(warm, case / "warmup" / "out"), env, case / "warmup" / "out", 1, False
        )
    runs = ["cold", "rerun"] if mode == "both" else [mode]
    done = [r for r in earlier if r["variant"] == label and r.get("cold", {}).get("flow_s")]
    if "cold" in runs and done:  # estimate from the largest earlier cold run: start-up + rows x flow s/row
        cold, n = done[-1]["cold"], done[-1]["rows"]
        minutes = (cold["wall_s"] - cold["flow_s"] + cold["flow_s"] / n * rows) / 60
        if minutes > args.max_cold_minutes:
            runs.remove("cold")
            result["cold_skipped"] = (
                f"cold run NOT RUN: estimated {minutes:.0f} min from the {n:,}-row cold run "
                f"(limit {args.max_cold_minutes:g} min)"
            )
    if runs == ["rerun"] and not output.exists():
        seed = write_manifest(case / "seed", min(rows, 4), variant)
        if (seeded := measure(command(seed, output), env, output, min(rows, 4), False))["rc"]:
            raise SystemExit(f"the run that makes outputs to clone failed: {seeded['log_tail']}")
        clone_outputs(output, manifest, model)
        result["rerun_prepared_by"] = (
            "one finished video's files hard-linked under every id, each with its own metadata.json and row "
            "fingerprint (no cold run)"
        )
    for name in runs:
        if name == "cold" and output.exists():
            shutil.rmtree(output)
        before = db_stats(home)
        run = measure(command(manifest, output), env, output, rows, quarters=name == "cold")
        after = db_stats(home)
        run["db_before_bytes"], run["db_after_bytes"] = before["bytes"], after["bytes"]
        run["db_after_raw_bytes"] = after["raw_bytes"]
        run["db_kb_per_row"] = round((after["bytes"] - before["bytes"]) / 1024 / rows, 2)
        run["task_runs_added"] = after["task_runs"] - before["task_runs"]
        run["events_added"] = after["events"] - before["events"]
        run["db_kb_per_row_by_table"] = table_growth(before, after, rows)
        run["rows_per_s"] = round(rows / run["wall_s"], 2)
        if name == "cold":
            run["compute_s"] = compute_seconds(output)
            run["prefect"] = task_timings(home)
        compute = sum(run.get("compute_s", {}).values())
        run["overhead_ms_per_row"] = round(1000 * (run["wall_s"] - compute) / rows, 1)
        if run["flow_s"] is not None:  # the same without process start-up, imports and server start
            run["flow_overhead_ms_per_row"] = round(1000 * (run["flow_s"] - compute) / rows, 1)
        result[name] = run
    return result


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "commit": commit.stdout.strip() or "unknown",
        "python": platform.python_version(),
    }


def verdicts(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        if "rerun" in r and r["rows"] in RERUN_TARGETS_S:
            target = RERUN_TARGETS_S[r["rows"]]
            ok = r["rerun"]["wall_s"] <= target and r["rerun"]["rc"] == 0
            lines.append(
                f"cached rerun of {r['rows']:,} rows ({r['variant']}): {r['rerun']['wall_s']} s "
                f"(target <= {target:.0f} s): {'PASS' if ok else 'FAIL'}"
            )
    # the measure is the run process (the CLI); the tree adds the embedded server and ffmpeg
    for kind, (measure_name, key) in itertools.product(
        ("cold", "rerun"), (("run process", "peak_rss_cli_mb"), ("tree", "peak_rss_tree_mb"))
    ):
        by_rows = {(r["rows"], r["variant"]): r[kind][key] for r in results if kind in r}
        for (rows, variant), small in by_rows.items():
            large = by_rows.get((10 * rows, variant))
            if rows == 1000 and large:
                verdict = "PASS" if large <= RSS_TARGET_RATIO * small else "FAIL"
                lines.append(
                    f"peak RSS ({measure_name}), {kind} {variant}: 10,000 rows {large} MB / 1,000 rows "
                    f"{small} MB = {large / small:.2f}x (target <= {RSS_TARGET_RATIO}x): {verdict}"
                )
    for r in results:  # no 10,000-row cold run: the 1,000-row run's own trend, marked as an extrapolation
        quarters = r.get("cold", {}).get("peak_tree_mb_at_rows_pct", {})
        if (
            r["rows"] == 1000
            and 25 in quarters
            and 100 in quarters
            and not any(x["rows"] == 10000 and "cold" in x and x["variant"] == r["variant"] for x in results)
        ):
            slope = (quarters[100] - quarters[25]) / 750
            guess = quarters[100] + slope * 9000
            lines.append(
                f"peak RSS (tree), cold {r['variant']}: 10,000 rows not measured; the 1,000-row run grew "
                f"{quarters[25]} -> {quarters[100]} MB from 25 % to 100 % of rows ({1000 * slope:.1f} MB per "
                f"1,000 rows); a straight line gives ~{guess:.0f} MB = {guess / quarters[100]:.2f}x at 10k "
                f"(EXTRAPOLATED, not a measurement)"
            )
    return lines or ["no target applies to these row counts (targets need 1,000 and 10,000 rows)"]


def report(info: dict, argv: list[str], results: list[dict]) -> str:
    head = "| rows | variant | run | rc | made/cached/failed | wall s | flow s | rows/s | overhead ms/row "
    head += "(wall; flow) | peak RSS CLI MB | peak RSS tree MB | DB KB/row | task runs | events |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        for kind in ("warmup", "cold", "rerun"):
            if kind in r:
                m = r[kind]
                lines.append(
                    f"| {r['rows']:,} | {r['variant']} | {kind} | {m['rc']} | {m['made_cached_failed']} "
                    f"| {m['wall_s']} | {m['flow_s']} | {m.get('rows_per_s', '')} "
                    f"| {m.get('overhead_ms_per_row', '')}; {m.get('flow_overhead_ms_per_row', '')} "
                    f"| {m['peak_rss_cli_mb']} | {m['peak_rss_tree_mb']} | {m.get('db_kb_per_row', '')} "
                    f"| {m.get('task_runs_added', '')} | {m.get('events_added', '')} |"
                )
    detail = []
    for r in results:
        if "cold" in r:
            c = r["cold"]
            per_row = {k: round(1000 * v / r["rows"], 1) for k, v in c["compute_s"].items()}
            detail.append(
                f"- {r['variant']} {r['rows']:,} cold: metadata timings, ms/row {per_row}; Prefect task runs "
                f"{c['prefect']}; peak tree MB at 25/50/75/100 % of rows {c['peak_tree_mb_at_rows_pct']}; "
                f"children's peak MB {c['peak_rss_children_mb']}; DB {c['db_before_bytes'] / 2**20:.1f} -> "
                f"{c['db_after_bytes'] / 2**20:.1f} MB; DB KB/row by table {c['db_kb_per_row_by_table']}"
            )
        if "cold_skipped" in r:
            detail.append(f"- {r['variant']} {r['rows']:,}: {r['cold_skipped']}")
        if "rerun_prepared_by" in r:
            detail.append(f"- {r['variant']} {r['rows']:,} rerun: output made by {r['rerun_prepared_by']}")
    return "\n".join(
        [
            f"### Orchestration benchmark ({info['date']})",
            "",
            f"Machine: {info['cpu']}, {info['cores']} cores (load {info['load_avg_1m_at_start']} at start), "
            f"Python {info['python']}, commit `{info['commit']}`.",
            f"Command: `python benchmarks/orchestration.py {' '.join(argv)}`; each run is "
            f"`{results[0]['command']}` with a fresh PREFECT_HOME (embedded server), after a 1-row warm-up.",
            "flow s: the flow's own time (rows in to results out), without process start, imports and server "
            "start. Overhead = (time - sum of metadata timings) / rows; those timings include device-lock "
            "waits when rows overlap, so it is exact only at --in-flight 1.",
            "",
            *lines,
            "",
            *detail,
            "",
            *(f"- {v}" for v in verdicts(results)),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append", help="manifest rows (repeatable; default 1000)")
    parser.add_argument("--mode", choices=["cold", "rerun", "both"], default="both")
    add = parser.add_argument
    add(
        "--variant", choices=["synthetic", "real"], action="append", help="real: 4 PNGs + caption (synthetic)"
    )
    add("--workdir", type=Path, help="models, manifests and outputs go here (default: a temp dir)")
    add("--in-flight", type=int, help="pass --in-flight N to stillmotion run (default: its own)")
    add("--max-cold-minutes", type=float, default=25, help="skip longer cold runs, estimated (25)")
    add("--env", action="append", metavar="NAME=VALUE", help="set in the runs' environment (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    args.workdir = workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="stillmotion-orch-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = workdir / "tiny-model"
    if not (model / "model_index.json").exists():
        subprocess.run([*cli(), "make-tiny-model", str(model)], check=True, stdout=subprocess.DEVNULL)
    info, results = machine(), []
    for rows in sorted(args.rows or [1000]):
        for variant in args.variant or ["synthetic"]:
            print(f"== {variant}, {rows:,} rows, mode {args.mode} (workdir {workdir})", flush=True)
            results.append(run_case(rows, variant, args, model, results))
            print(json.dumps(results[-1], indent=1), flush=True)
    text = report(info, argv if argv is not None else sys.argv[1:], results)
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results, "markdown": text}, indent=1))
    return 0 if all(r[k]["rc"] == 0 for r in results for k in ("cold", "rerun") if k in r) else 1


if __name__ == "__main__":
    sys.exit(main())
