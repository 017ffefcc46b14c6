"""Static splits for any launcher (--num-shards/--shard-index, Slurm and Kubernetes indices) and merge."""

import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.testing.utilities import prefect_test_harness

from stillmotion.cli import main
from stillmotion.flows import RunError, batch_flow
from stillmotion.flows.parts import Split, find_parts, split_of
from stillmotion.storage import OutputStore
from stillmotion.tasks import COMPUTED

TINY = {"steps": 1, "keyframes": 1, "frames": 1}


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def manifest(path: Path, rows: int) -> str:
    table = pa.table(
        {
            "video_id": [f"v{i}" for i in range(rows)],
            "source_prompt": ["a red car"] * rows,
            "prompts": [[f"a blue car {i}"] for i in range(rows)],
            **{name: [value] * rows for name, value in TINY.items()},
        }
    )
    pq.write_table(table, path)
    return str(path)


def test_blocks_go_round_robin_and_every_row_has_one_owner():
    splits = [Split(3, k, 2) for k in range(3)]
    owners = [[s.index for s in splits if s.owns(row)] for row in range(13)]
    assert owners == [[0], [0], [1], [1], [2], [2], [0], [0], [1], [1], [2], [2], [0]]
    assert [s.rows_of(13) for s in splits] == [5, 4, 4]
    assert sum(Split(16, k, 32).rows_of(10_000) for k in range(16)) == 10_000
    assert all(Split(16, k, 32).rows_of(10_000) > 0 for k in range(16))  # 16 indices all get work


def test_the_index_comes_from_the_launchers_environment():
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert split_of(None, None, 4, slurm) == Split(8, 4, 4)  # a 1-based array: task 5 is index 4
    assert split_of(None, None, 4, {**slurm, "SLURM_ARRAY_TASK_MIN": "0"}) == Split(8, 5, 4)
    assert split_of(16, None, 4, {"JOB_COMPLETION_INDEX": "3"}) == Split(16, 3, 4)  # Kubernetes
    assert split_of(None, None, 4, {}) is None  # a plain run
    assert split_of(2, 1, 4, slurm) == Split(2, 1, 4)  # options win
    with pytest.raises(RunError, match="--shard-index"):
        split_of(4, None, 4, {})
    with pytest.raises(RunError, match="0..3"):
        split_of(4, 4, 4, {})


def tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted(tar.getnames())


def test_three_indices_then_merge_make_what_one_run_makes(tiny_model_dir, tmp_path, capsys):
    rows = 7
    source = manifest(tmp_path / "m.parquet", rows)
    split, single = tmp_path / "split", tmp_path / "single"
    common = ["--model", str(tiny_model_dir), "--no-progress", "--format", "webdataset", "--shard-size", "2"]
    # index 1 is left out at first: merge names it and the command that reruns it
    for index in (0, 2):
        args = ["run", source, "--output", str(split), "--num-shards", "3", "--shard-index", str(index)]
        assert main([*args, *common]) == 0
    assert not (split / "results.parquet").exists()  # an index writes its part, not the results
    capsys.readouterr()
    assert main(["merge", str(split)]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "--num-shards 3 --shard-index 1" in err
    assert (
        main(["run", source, "--output", str(split), "--num-shards", "3", "--shard-index", "1", *common]) == 0
    )
    assert main(["merge", str(split)]) == 0
    merged = pq.read_table(split / "results.parquet").to_pylist()
    assert [r["video_id"] for r in merged] == [f"v{i}" for i in range(rows)]
    assert all(r["status"] == "ok" for r in merged) and (split / "report.html").exists()
    # each tar packed by exactly one index: its stats name the rows of one block
    for shard in range(4):
        stats = json.loads((split / f"{shard:05d}_stats.json").read_text())
        assert stats["first_row"] == 2 * shard and stats["count"] == min(2, rows - 2 * shard)

    # the same manifest in one plain run, on another cache: the same keys and the same videos
    before = COMPUTED.copy()
    assert main(["run", source, "--output", str(single), *common]) == 0
    assert (COMPUTED - before)["keyframes"] == rows
    single_rows = pq.read_table(single / "results.parquet").to_pylist()
    assert [r["fingerprint"] for r in single_rows] == [r["fingerprint"] for r in merged]
    for shard in range(4):
        assert tar_members(split / f"{shard:05d}.tar") == tar_members(single / f"{shard:05d}.tar")
        for name in tar_members(split / f"{shard:05d}.tar"):
            if name.endswith(".json"):
                a = json.loads(tarfile.open(split / f"{shard:05d}.tar").extractfile(name).read())
                b = json.loads(tarfile.open(single / f"{shard:05d}.tar").extractfile(name).read())
                assert a["artifacts"] == b["artifacts"] and a["hashes"] == b["hashes"]


def test_a_rerun_of_an_index_redoes_only_its_unfinished_rows_and_an_old_split_is_not_merged(
    tiny_model_dir, tmp_path
):
    source = manifest(tmp_path / "m.parquet", 4)
    output = str(tmp_path / "out")
    options = dict(manifest=source, output=output, model=str(tiny_model_dir), num_shards=2)
    for index in (0, 1):
        batch_flow(**options, shard_index=index)
    parts = find_parts(OutputStore(output))
    assert parts.whole and parts.count == 2
    # index 1's marker lost (its process was killed between its part and its marker): incomplete
    marker = Path(output) / parts.folder / "00001.json"
    marker.unlink()
    assert find_parts(OutputStore(output)).incomplete == [1]
    before = COMPUTED.copy()
    batch_flow(**options, shard_index=1)
    assert COMPUTED == before and find_parts(OutputStore(output)).whole  # nothing made twice
    # the manifest changes: a new split; the old split's parts are not merged with the new one's
    source = manifest(tmp_path / "m.parquet", 5)
    batch_flow(**{**options, "manifest": source}, shard_index=0)
    newest = find_parts(OutputStore(output))
    assert newest.folder != parts.folder and newest.complete.keys() == {0} and newest.missing == [1]


def test_an_index_runs_its_own_embedded_prefect_server_in_its_own_home(tiny_model_dir, tmp_path):
    """As under Slurm or Kubernetes: no PREFECT_API_URL, the index in the environment; the index starts
    its own embedded server in PREFECT_HOME/stillmotion-index-N-K (several on one SQLite home conflict)."""
    import os
    import subprocess
    import sys

    source = manifest(tmp_path / "m.parquet", 4)
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1"}
    env |= {"SLURM_ARRAY_TASK_COUNT": "2", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    exe = Path(sys.executable).parent / "stillmotion"
    args = [str(exe), "run", source, "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir)]
    args += ["--no-progress", "--format", "webdataset", "--shard-size", "2"]  # index 1: rows 2 and 3
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (home / "stillmotion-index-2-1" / "prefect.db").exists()  # task 2 of a 1-based array: index 1
    parts = find_parts(OutputStore(str(tmp_path / "out")))
    assert parts.complete.keys() == {1} and parts.missing == [0]
