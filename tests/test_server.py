"""Against a real `prefect server start` on 127.0.0.1: a served, scheduled deployment, and the Dask runner."""

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services import BIN, prefect_server, start, stop


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        yield env


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    for i in range(3):
        rng = np.random.default_rng(i)
        PIL.Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    table = pa.table(
        {
            "video_id": ["v0", "v1", "v2", "s"],
            "image": ["0.png", "1.png", "2.png", None],
            "source_prompt": [None, None, None, "a red car"],
            "caption": ["a photo", None, "a photo", None],
            "prompts": [["a dog"], ["a cat", "a bird"], ["a fish"], ["a blue car"]],
            "steps": [4] * 4,
            "keyframes": [2] * 4,
            "frames": [2] * 4,
        }
    )
    pq.write_table(table, folder / "manifest.parquet")
    return str(folder / "manifest.parquet")


def run_cli(args, env, timeout=600):
    result = subprocess.run(
        [str(BIN / "stillmotion"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_scheduled_deployment_served_and_triggered(server, manifest, tiny_model_dir, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    output = tmp_path / "served"
    serve = start(
        [
            str(BIN / "stillmotion"),
            "serve",
            manifest,
            "--output",
            str(output),
            "--model",
            str(tiny_model_dir),
            "--cron",
            "0 2 * * *",
            "--name",
            "test-nightly",
            "--chunk-rows",
            "7",
        ],
        server,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}):
            with get_client(sync_client=True) as client:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        deployment = client.read_deployment_by_name("stillmotion-batch/test-nightly")
                        break
                    except Exception:  # noqa: BLE001 - not registered yet
                        assert serve.poll() is None, serve.stderr.read().decode()[-3000:]
                        assert time.monotonic() < deadline, "deployment was not registered"
                        time.sleep(0.5)
            assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
            assert deployment.parameters["output"] == str(output)
            # in_flight None: the runner's own size (4 locally, 2 x the GPUs of a Dask cluster)
            assert deployment.parameters["chunk_rows"] == 7 and deployment.parameters["in_flight"] is None
            flow_run = run_deployment("stillmotion-batch/test-nightly", timeout=300)
        assert flow_run.state.is_completed(), flow_run.state
    finally:
        stop(serve)
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert [r["status"] for r in results] == ["ok"] * 4
    assert all((output / r["video_id"] / "metadata.json").exists() for r in results)


def load_png(path):
    return np.asarray(PIL.Image.open(path), dtype=np.int16)


def test_dask_runner_matches_local_runner_and_never_shares_a_gpu_slot(
    server, manifest, tiny_model_dir, tmp_path
):
    common = [manifest, "--model", str(tiny_model_dir), "--no-progress"]
    run_cli(["run", *common, "--output", str(tmp_path / "local")], server)
    run_cli(
        ["run", *common, "--output", str(tmp_path / "dask"), "--runner", "dask", "--dask-workers", "2"],
        server,
    )

    for video_id in ["v0", "v1", "v2", "s"]:
        local = json.loads((tmp_path / "local" / video_id / "metadata.json").read_text())
        dask = json.loads((tmp_path / "dask" / video_id / "metadata.json").read_text())
        assert local["artifacts"] == dask["artifacts"]  # same content keys: same inputs, same work
        pngs = sorted(name for name in local["hashes"] if name.endswith(".png"))
        for name in pngs:  # worker processes may use other BLAS thread counts: allow rounding
            difference = np.abs(
                load_png(tmp_path / "local" / video_id / name) - load_png(tmp_path / "dask" / video_id / name)
            )
            assert difference.max() <= 2, (video_id, name)

    # model stages ran on both workers, and never two at once on one worker
    intervals: dict[str, list[tuple[float, float]]] = {}
    artifacts = tmp_path / "dask" / ".cache" / "artifacts"
    for stage in ["caption", "invert", "keyframes", "frames"]:
        for sidecar in (artifacts / stage).glob("*.json"):
            record = json.loads(sidecar.read_text())
            intervals.setdefault(record["worker"], []).append((record["started"], record["ended"]))
    assert len(intervals) == 2, intervals.keys()
    assert sum(map(len, intervals.values())) == 1 + 3 + 4 + 4  # one BLIP caption, 3 inversions, 4 + 4
    for spans in intervals.values():
        spans.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))


def test_prefect_yaml_deploys_and_a_process_worker_runs_it(server, manifest, tiny_model_dir, tmp_path):
    prefect = str(BIN / "prefect")
    repo = Path(__file__).resolve().parents[1]
    env = {**server, "PREFECT_UI_ENABLED": "false"}
    subprocess.run(
        [prefect, "work-pool", "create", "stillmotion-gpu", "--type", "process"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    deploy = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--all"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    output = tmp_path / "worker-out"
    params = [f"manifest={manifest}", f"output={output}", f"model={tiny_model_dir}"]
    trigger = subprocess.run(
        [
            prefect,
            "deployment",
            "run",
            "stillmotion-batch/nightly",
            *sum((["--param", p] for p in params), []),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert trigger.returncode == 0, trigger.stderr[-2000:]
    worker = start(
        [prefect, "worker", "start", "--pool", "stillmotion-gpu", "--run-once"],
        env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        worker.wait(timeout=400)
    finally:
        stop(worker)
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert [r["status"] for r in results] == ["ok"] * 4


def test_two_runs_share_one_gpu_slot_and_never_hold_it_at_once(server, manifest, tiny_model_dir, tmp_path):
    """Two `stillmotion run` processes on one machine and server, the CPU as their one "GPU": each model
    stage holds the device's slot, and no two holds (from either process) overlap."""
    import socket as sockets

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = f"stillmotion-gpu:{sockets.gethostname()}:cpu"
    common = [manifest, "--model", str(tiny_model_dir), "--no-progress", "--device", "cpu"]
    # 1. slots on and no limit yet: the run stops at once and says what to run
    missing = subprocess.run(
        [str(BIN / "stillmotion"), "run", *common, "--output", str(tmp_path / "none"), "--gpu-slots", "on"],
        env=server,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 1, missing.stderr[-2000:]
    assert f"no GPU slot '{name}'" in missing.stderr and "`stillmotion gpu-slots`" in missing.stderr
    assert not list((tmp_path / "none").glob("*/metadata.json"))

    # 2. the command makes the limit, and making it again changes nothing
    assert f"{name}: created (limit 1)" in run_cli(["gpu-slots", "--device", "cpu"], server).stdout
    assert f"{name}: unchanged (limit 1)" in run_cli(["gpu-slots"], server).stdout
    with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
    assert (limit.limit, limit.active) == (1, True)

    # 3. two runs at once, one with slots on, one on auto (the limit exists on this real server)
    log = tmp_path / "holds.jsonl"
    env = {**server, "STILLMOTION_SLOT_LOG": str(log), "OMP_NUM_THREADS": "1"}
    runs = [
        start(
            [str(BIN / "stillmotion"), "run", *common, "--output", str(tmp_path / f"out{i}"), *mode],
            env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, mode in enumerate([["--gpu-slots", "on"], []])
    ]
    try:
        for run in runs:
            assert run.wait(timeout=600) == 0, run.stderr.read()[-3000:]
    finally:
        for run in runs:
            stop(run)
    for i in range(2):
        results = pq.read_table(tmp_path / f"out{i}" / "results.parquet").to_pylist()
        assert [r["status"] for r in results] == ["ok"] * 4
    holds = [json.loads(line) for line in log.read_text().splitlines()]
    assert {hold["slot"] for hold in holds} == {name}
    by_process = {hold["pid"] for hold in holds}
    assert by_process == {run.pid for run in runs}  # both processes' stages held it
    # per run: one BLIP caption, 3 inversions, 4 key-frame and 4 frame stages (+ model scores, if any)
    assert all(sum(hold["pid"] == pid for hold in holds) >= 12 for pid in by_process)
    holds.sort(key=lambda hold: hold["enter"])
    for held, following in zip(holds, holds[1:], strict=False):
        assert held["exit"] <= following["enter"], (held, following)
    # the runs overlapped: the slot passed from one process to the other and back
    switches = sum(a["pid"] != b["pid"] for a, b in zip(holds, holds[1:], strict=False))
    assert switches >= 2, [hold["pid"] for hold in holds]


def test_external_dask_cluster_keeps_every_worker_busy_and_survives_losing_one(
    server, tiny_model_dir, tmp_path
):
    """A real `dask scheduler` and two `dask worker --resources GPU=1` processes on loopback, as the README
    shows: the rows in flight follow the cluster (2 x its GPUs), both workers make rows, and a worker
    killed with SIGKILL mid-run is survived: every row completes and nothing finished is made again."""
    from distributed import Client

    from services import free_port, wait_until

    port, rows = free_port(), 12
    address, loopback = f"tcp://127.0.0.1:{port}", ["--dashboard-address", "127.0.0.1:0"]
    log = open(tmp_path / "dask.log", "wb")  # noqa: SIM115 - closed at the end
    dask = str(BIN / "dask")
    scheduler = start([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), *loopback], server,
                      stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    # A Nanny (LocalCluster, `dask worker` without --no-nanny) starts its worker with OMP_NUM_THREADS=1
    # (distributed.nanny.pre-spawn-environ); --no-nanny workers (here for their pids) do not, so each
    # would run torch on 2 OpenMP threads: 4 spinning threads on this 2-core machine (shared with other
    # tests) made one worker's first key frames take 15-28 s while the other's took 1.2 s, and three
    # rows were done before the slow worker had finished one (measured with py-spy: slow, not hung).
    worker_env = {**server, "OMP_NUM_THREADS": "1"}
    workers = []
    try:
        for i in range(2):
            args = [dask, "worker", address, "--resources", "GPU=1", "--nthreads", "2", "--no-nanny"]
            workers.append(start([*args, "--name", f"w{i}", *loopback], worker_env, stdout=log, stderr=log))
        with Client(address, timeout=60) as client:
            wait_until(lambda: len(client.scheduler_info()["workers"]) == 2, scheduler, "two Dask workers")
        table = pa.table(
            {
                "video_id": [f"d{i}" for i in range(rows)],
                "source_prompt": ["a red car"] * rows,
                "prompts": [[f"a blue car {i}"] for i in range(rows)],
                "steps": [6] * rows,
                "keyframes": [2] * rows,
                "frames": [2] * rows,
            }
        )
        pq.write_table(table, tmp_path / "m.parquet")
        output = tmp_path / "out"
        args = [str(BIN / "stillmotion"), "run", str(tmp_path / "m.parquet"), "--output", str(output)]
        args += ["--model", str(tiny_model_dir), "--no-progress", "--runner", "dask"]
        errors = open(tmp_path / "run.err", "wb")  # noqa: SIM115 - closed below
        run = start([*args, "--dask-address", address], server, stdout=subprocess.DEVNULL, stderr=errors)
        keyframes = output / ".cache" / "artifacts" / "keyframes"

        def makers() -> set:
            return {json.loads(p.read_text())["worker"] for p in keyframes.glob("*.json")}

        # a worker is lost mid-run, once both have made key frames (a worker's first row pays for its
        # imports and model load; under a busy machine one can lag) and three videos are out
        wait_until(lambda: len(list(output.glob("d*/metadata.json"))) >= 3 and len(makers()) == 2, run,
                   "three videos and key frames from both workers", timeout=300)  # fmt: skip
        finished = {p.parent.name for p in output.glob("d*/metadata.json")}
        keys = {v: json.loads((output / v / "metadata.json").read_text())["artifacts"] for v in finished}
        sidecars = [output / ".cache" / "artifacts" / f"{k}.json" for a in keys.values() for k in a.values()]
        stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sidecars if p.exists()}
        stop(workers[0], signal.SIGKILL)  # a machine lost mid-run
        assert len(finished) < rows, "every row was done before the kill: it did not happen mid-run"
        run.wait(timeout=400)
        errors.close()
        stderr = (tmp_path / "run.err").read_text()
        assert run.returncode == 0, stderr[-3000:]
        assert "rows in flight: 4 (2 Dask workers)" in stderr  # 2 x the cluster's GPUs, not a fixed 4
        results = pq.read_table(output / "results.parquet").to_pylist()
        assert [r["status"] for r in results] == ["ok"] * rows
        assert all((output / f"d{i}" / "video.mp4").exists() for i in range(rows))
        assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in stamps} == stamps  # none made again
        assert len(made_by := makers()) == 2, made_by  # both workers made rows
    finally:
        for process in [*workers, scheduler]:
            stop(process)
        log.close()
