"""Prefect on PostgreSQL, as production runs it: a throwaway PostgreSQL cluster on 127.0.0.1 (initdb in a
temporary folder, its own port, password authentication), `prefect server start` on it through
PREFECT_API_DATABASE_CONNECTION_URL, and the scheduled deployment served by `stillmotion serve` and
triggered: the videos are made, and the flow run ends Completed, through the API and in PostgreSQL's
own tables.

The PostgreSQL server binaries must be installed (Debian: `apt-get install postgresql-15
postgresql-contrib`); without them this test fails, saying so. PostgreSQL refuses to run as root:
as root, the cluster runs as `nobody`.
"""

import asyncio
import glob
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services import BIN, free_port, prefect_server, start, stop, wait_until

INSTALL = "apt-get install postgresql-15 postgresql-contrib"
USER, PASSWORD, DATABASE = "stillmotion", "pg-secret-8c41", "prefect"


def postgres_bin() -> Path:
    """The folder of initdb and postgres: $STILLMOTION_PG_BIN, else the newest
    /usr/lib/postgresql/<version>/bin (Debian's layout), else the PATH."""
    candidates = [os.environ.get("STILLMOTION_PG_BIN", "")]
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True
    )
    candidates.append(os.path.dirname(shutil.which("initdb") or ""))
    for folder in filter(None, candidates):
        if all(os.access(Path(folder) / name, os.X_OK) for name in ("initdb", "postgres")):
            return Path(folder)
    pytest.fail(f"PostgreSQL server binaries (initdb, postgres) not found: install them ({INSTALL})")


def unprivileged() -> tuple[list[str], int, int]:
    """The command prefix that runs a program as `nobody` when we are root (initdb and postgres refuse
    root), and the uid and gid it runs as."""
    if os.geteuid() != 0:
        return [], os.geteuid(), os.getegid()
    nobody = pwd.getpwnam("nobody")
    if shutil.which("setpriv"):  # execs the program itself: the process we start is postgres
        ids = [f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        return ["setpriv", *ids, "--"], nobody.pw_uid, nobody.pw_gid
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"], nobody.pw_uid, nobody.pw_gid
    pytest.fail("running as root, and neither setpriv nor runuser is here to run PostgreSQL as nobody")


def query(dsn: str, sql: str, *args):
    import asyncpg

    async def fetch():
        connection = await asyncpg.connect(dsn, timeout=5)
        try:
            return await connection.fetch(sql, *args)
        finally:
            await connection.close()

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster in a temporary folder, on a free port of 127.0.0.1 (its unix socket in that
    folder), with a `prefect` database; yields the DSN of that database."""
    binaries = postgres_bin()
    prefix, uid, gid = unprivileged()
    # not pytest's tmp_path: it lies in a folder only root may enter
    folder = Path(tempfile.mkdtemp(prefix="stillmotion-pg-"))
    server = None
    try:
        (folder / "password").write_text(PASSWORD + "\n")
        for path in (folder, folder / "password"):
            os.chown(path, uid, gid)
        run_as = {"cwd": folder, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        initdb = [
            str(binaries / "initdb"),
            "-D",
            str(folder / "data"),
            "-U",
            USER,
            "--pwfile",
            str(folder / "password"),
        ]
        initdb += ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        made = subprocess.run(prefix + initdb, timeout=120, **run_as)
        assert made.returncode == 0, f"initdb failed:\n{made.stdout[-3000:]}"
        port = free_port()
        args = [str(binaries / "postgres"), "-D", str(folder / "data"), "-p", str(port), "-k", str(folder)]
        args += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]  # throwaway: no syncs
        with open(folder / "postgres.log", "wb") as log:
            server = start(prefix + args, os.environ, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        root = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}"
        took = wait_until(lambda: query(f"{root}/postgres", "SELECT 1"), server, "postgres", timeout=60)
        version = query(f"{root}/postgres", "SHOW server_version")[0][0]
        print(f"PostgreSQL {version} ready in {took:.1f} s on port {port}")
        query(f"{root}/postgres", f"CREATE DATABASE {DATABASE}")
        trgm = query(f"{root}/{DATABASE}", "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
        assert trgm, f"PostgreSQL's pg_trgm extension, which Prefect needs, is missing: {INSTALL}"
        yield f"{root}/{DATABASE}"
    finally:
        if server is not None:
            stop(server, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """`prefect server start` with its database on PostgreSQL."""
    home = tmp_path_factory.mktemp("prefect-home")
    url = postgres.replace("postgresql://", "postgresql+asyncpg://", 1)
    with prefect_server(home, timeout=180, PREFECT_API_DATABASE_CONNECTION_URL=url) as env:
        yield env
    assert not list(home.glob("*.db")), "the server made a SQLite database: it did not use PostgreSQL"


@pytest.fixture
def manifest(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
        folder / "0.png"
    )
    table = pa.table(
        {
            "video_id": ["photo", "synthetic"],
            "image": ["0.png", None],
            "source_prompt": [None, "a red car"],
            "caption": ["a photo", None],
            "prompts": [["a dog"], ["a blue car"]],
            "steps": [3, 3],
            "keyframes": [2, 2],
            "frames": [2, 2],
        }
    )
    pq.write_table(table, folder / "manifest.parquet")
    return str(folder / "manifest.parquet")


def test_scheduled_deployment_on_a_postgres_backed_server(
    postgres, server, manifest, tiny_model_dir, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    output = tmp_path / "served"
    args = [
        str(BIN / "stillmotion"),
        "serve",
        manifest,
        "--output",
        str(output),
        "--model",
        str(tiny_model_dir),
    ]
    args += ["--cron", "0 3 * * *", "--name", "postgres-nightly"]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        serve = start(args, server, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    try:
        with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}):
            with get_client(sync_client=True) as client:
                try:
                    wait_until(
                        lambda: client.read_deployment_by_name("stillmotion-batch/postgres-nightly"),
                        serve,
                        "stillmotion serve (registering its deployment)",
                    )
                except AssertionError as error:
                    raise AssertionError(f"{error}; its log ends:\n{log_path.read_text()[-3000:]}") from None
                deployment = client.read_deployment_by_name("stillmotion-batch/postgres-nightly")
                assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
                flow_run = run_deployment("stillmotion-batch/postgres-nightly", timeout=300)
                final = client.read_flow_run(flow_run.id)  # the server's record of it, read back
                subflows = client.read_flow_runs()
                # the run's record, in PostgreSQL's own tables, read while serve still runs: Prefect's
                # runner, stopping, force-marks Cancelled every run whose process it has not yet reaped,
                # also one that has just completed (seen once under load; README, "Running at scale")
                state = "SELECT state_type::text, state_name FROM flow_run WHERE id = $1"
                rows = query(postgres, state, flow_run.id)
    finally:
        stop(serve)
    print(f"served and run in {time.monotonic() - started:.1f} s")
    assert final.state.type == StateType.COMPLETED and final.state.name == "Completed", final.state
    assert final.deployment_id == deployment.id
    spans = [run for run in subflows if run.parent_task_run_id is not None]
    assert spans and all(run.state.is_completed() for run in spans)  # the rows' span subflow(s) too

    assert [tuple(row) for row in rows] == [("COMPLETED", "Completed")]

    # and the videos are made, whole
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert [(r["video_id"], r["status"]) for r in results] == [("photo", "ok"), ("synthetic", "ok")]
    for video_id in ("photo", "synthetic"):
        hashes = json.loads((output / video_id / "metadata.json").read_text())["hashes"]
        assert "video.mp4" in hashes
        for name, digest in hashes.items():
            assert hashlib.sha256((output / video_id / name).read_bytes()).hexdigest() == digest, name
