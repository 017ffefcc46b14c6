"""The batch flow on the tiny model: results, failures, publishing, caching and resume."""

import json
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.testing.utilities import prefect_test_harness

from stillmotion.cli import main
from stillmotion.flows import RunError, batch_flow
from stillmotion.tasks import COMPUTED, runtime

FAST = {"steps": 3, "keyframes": 2, "frames": 2}


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_image(path: Path, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path.name


def write_manifest(path: Path, rows: list[dict]) -> str:
    columns = [
        "video_id",
        "image",
        "source_prompt",
        "prompts",
        "caption",
        "keyframes",
        "frames",
        "steps",
        "tag",
    ]
    table = {name: [row.get(name, FAST.get(name)) for row in rows] for name in columns}
    schema = pa.schema(
        [
            ("video_id", pa.string()),
            ("image", pa.string()),
            ("source_prompt", pa.string()),
            ("prompts", pa.list_(pa.string())),
            ("caption", pa.string()),
            ("keyframes", pa.int32()),
            ("frames", pa.int64()),
            ("steps", pa.int64()),
            ("tag", pa.string()),
        ]
    )
    pq.write_table(pa.table(table, schema=schema), path)
    return str(path)


def results(output: str) -> list[dict]:
    with fsspec.open(f"{output}/results.parquet", "rb") as handle:
        return pq.read_table(handle).to_pylist()


def task_states(flow_state) -> dict[str, list[str]]:
    """Task-run state names of one batch run (its chunk subflows), by stage (what Prefect's UI shows)."""
    flow_run_id = flow_state.state_details.flow_run_id
    chunks = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=chunks)
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.split("-")[0], []).append(run.state.name)
    return states


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "inputs"
    write_image(folder / "a.png", 1)
    write_image(folder / "b.png", 2)
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


def test_good_rows_succeed_and_bad_rows_fail_alone(tiny_model_dir, inputs, tmp_path):
    manifest = write_manifest(
        inputs / "manifest.parquet",
        [
            {"video_id": "a", "image": "a.png", "prompts": ["a dog"], "tag": "x"},
            {"video_id": "synthetic", "source_prompt": "a red car", "prompts": ["a blue car", "a green car"]},
            {"video_id": "missing", "image": "nope.png", "prompts": ["a dog"]},
            {"video_id": "empty", "image": "empty.png", "prompts": ["a dog"]},
            {"video_id": "corrupt", "image": "corrupt.png", "prompts": ["a dog"]},
            {"video_id": "a", "image": "b.png", "prompts": ["a cat"]},
            {"video_id": "../escape", "image": "a.png", "prompts": ["a dog"]},
            {"video_id": "no-prompts", "image": "a.png", "prompts": []},
            {"video_id": "bad-frames", "image": "a.png", "prompts": ["x"], "keyframes": 3, "frames": 2},
            {
                "video_id": "long",
                "image": "b.png",
                "caption": "a photo",
                "prompts": ["一只狗 🐶 " + "word " * 100],
            },
        ],
    )
    output = str(tmp_path / "out")
    summary = batch_flow(manifest, output, model=str(tiny_model_dir))
    assert summary["done"] == 3 and summary["failed"] == 7 and summary["cached"] == 0

    table = {row["row"]: row for row in results(output)}
    assert [table[i]["status"] for i in range(10)] == ["ok", "ok"] + ["failed"] * 7 + ["ok"]
    assert table[0]["tag"] == "x" and table[0]["video"].endswith("a/video.mp4")  # extra column carried
    assert "not found" in table[2]["error"] and "nope.png" in table[2]["error"]
    assert "empty" in table[3]["error"]
    assert "decode" in table[4]["error"]
    assert table[5]["error"] == "video_id: duplicate of row 0"
    assert table[6]["error"].startswith("video_id:") and table[6]["video_id"] == "../escape"
    assert table[7]["error"].startswith("prompts:")
    assert table[8]["error"].startswith("frames:")
    # failures in tasks leave a full traceback in .logs/, first line = the reason in results
    log = (Path(output) / ".logs" / "corrupt.txt").read_text()
    assert log.splitlines()[0] == table[4]["error"] and "Traceback" in log
    # published videos are complete; nothing is left staged
    for video_id, frames in [("a", 1 + 2), ("synthetic", 1 + 2 * 2), ("long", 1 + 2)]:
        metadata = json.loads((Path(output) / video_id / "metadata.json").read_text())
        assert metadata["frame_count"] == frames
        assert len(list((Path(output) / video_id / "keyframes").iterdir())) == metadata["keyframe_count"]
    assert json.loads((Path(output) / "long" / "metadata.json").read_text())["notes"][0].startswith(
        "prompt truncated"
    )
    assert not list((Path(output) / ".staging").iterdir())


def test_rerun_recomputes_nothing_and_loads_no_model(tiny_model_dir, inputs, tmp_path):
    manifest = write_manifest(
        inputs / "manifest.parquet",
        [
            {"video_id": "a", "image": "a.png", "prompts": ["a dog"]},
            {"video_id": "b", "image": "b.png", "prompts": ["a cat", "a bird"]},
            {"video_id": "s", "source_prompt": "a red car", "prompts": ["a blue car"]},
        ],
    )
    output = str(tmp_path / "out")
    batch_flow(manifest, output, model=str(tiny_model_dir))
    assert {row["status"] for row in results(output)} == {"ok"}

    # 1. a finished manifest: every video found by lookup, no task, no model
    runtime.release_models()
    before = COMPUTED.copy()
    state = batch_flow(manifest, output, model=str(tiny_model_dir), return_state=True)
    assert state.result()["cached"] == 3
    assert COMPUTED == before and runtime.loaded_models() == 0
    assert task_states(state) == {}
    assert all(row["cached"] for row in results(output))

    # 2. a published video lost: only publishing runs again, every stage comes from the cache
    fsspec.filesystem("file").rm(f"{output}/b", recursive=True)
    state = batch_flow(manifest, output, model=str(tiny_model_dir), return_state=True)
    assert COMPUTED == before
    states = task_states(state)
    assert states.pop("publish") == ["Completed"] and states.pop("source") == ["Completed"]
    assert all(names == ["Cached"] for names in states.values()), states
    assert (Path(output) / "b" / "metadata.json").exists()

    # 3. one row's prompts change: only its key frames and what follows are recomputed
    write_manifest(
        inputs / "manifest.parquet",
        [
            {"video_id": "a", "image": "a.png", "prompts": ["a dog"]},
            {"video_id": "b", "image": "b.png", "prompts": ["a cat", "a fish"]},
            {"video_id": "s", "source_prompt": "a red car", "prompts": ["a blue car"]},
        ],
    )
    before = COMPUTED.copy()
    batch_flow(
        manifest, output, model=str(tiny_model_dir), force=False, cache=None, limit=None, **{"in_flight": 2}
    )  # b is complete under its old prompts: --force is how to redo it
    assert COMPUTED == before
    before = COMPUTED.copy()
    batch_flow(manifest, output, model=str(tiny_model_dir), force=True)
    delta = COMPUTED - before
    assert delta["keyframes"] == 3 and delta["invert"] == 2  # --force recomputes everything
    fsspec.filesystem("file").rm(f"{output}/b", recursive=True)
    write_manifest(
        inputs / "manifest.parquet",
        [
            {"video_id": "b", "image": "b.png", "prompts": ["a cat", "a horse"]},
        ],
    )
    before = COMPUTED.copy()
    batch_flow(manifest, output, model=str(tiny_model_dir))
    delta = COMPUTED - before
    # caption and inversion reused; the new frames are scored again
    assert delta == {"keyframes": 1, "frames": 1, "encode": 1, "scores": 1}
    prompts = json.loads((Path(output) / "b" / "metadata.json").read_text())["prompts"]
    assert prompts == ["a cat", "a horse"]


def chunk_runs(flow_state) -> dict[str, dict[str, int]]:
    """The chunk subflows of one batch run: {flow run name: {stage: task runs}}."""
    flow_run_id = flow_state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        chunks = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        found = {}
        for chunk in chunks:
            assert chunk.state.is_completed()
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[chunk.id])))
            found[chunk.name] = Counter(run.name.split("-")[0] for run in runs)
    return found


def test_manifest_runs_in_spans_of_chunk_rows_one_subflow_each(tiny_model_dir, tmp_path, monkeypatch):
    rows = [{"video_id": f"s{i}", "source_prompt": "a red car", "prompts": ["a blue car"]} for i in range(5)]
    rows[4]["prompts"] = []  # a bad row: recorded by the parent, no task
    manifest = write_manifest(tmp_path / "manifest.parquet", rows)
    output = str(tmp_path / "out")
    state = batch_flow(manifest, output, model=str(tiny_model_dir), chunk_rows=2, return_state=True)
    assert state.result()["done"] == 4 and state.result()["failed"] == 1
    chunks = chunk_runs(state)
    # spans of 2 rows of work, [0, 1] and [2, 3]: each span's work is one subflow holding only its tasks
    assert sorted(chunks) == ["rows-0", "rows-2"]
    assert [chunks[name]["keyframes"] for name in ("rows-0", "rows-2")] == [2, 2]
    assert [row["video_id"] for row in results(output)] == [f"s{i}" for i in range(5)]
    # the progress artifact belongs to the batch run, though its first finished row was in a subflow
    batch_run = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["stillmotion-progress"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[batch_run]),
            )
        )
    assert progress

    # a rerun counts only rows that need work: two lost videos, rows apart, share one span ...
    lost = ("s0", "s3")
    for video_id in lost:
        fsspec.filesystem("file").rm(f"{output}/{video_id}", recursive=True)
    state = batch_flow(manifest, output, model=str(tiny_model_dir), chunk_rows=2, return_state=True)
    assert state.result()["cached"] == 2 and state.result()["done"] == 2
    assert list(chunk_runs(state)) == ["rows-0"]

    # ... unless it would reach past SPAN_REACH x chunk_rows manifest rows (rows finished meanwhile wait)
    monkeypatch.setattr("stillmotion.flows.batch.SPAN_REACH", 1)
    for video_id in lost:
        fsspec.filesystem("file").rm(f"{output}/{video_id}", recursive=True)
    state = batch_flow(manifest, output, model=str(tiny_model_dir), chunk_rows=2, return_state=True)
    assert sorted(chunk_runs(state)) == ["rows-0", "rows-3"]
    assert [row["status"] for row in results(output)] == ["ok", "ok", "ok", "ok", "failed"]


@pytest.mark.parametrize("option", ["chunk_rows", "in_flight"])
def test_span_and_window_sizes_must_be_positive(tiny_model_dir, tmp_path, option):
    manifest = write_manifest(
        tmp_path / "manifest.parquet", [{"video_id": "a", "source_prompt": "a car", "prompts": ["a bus"]}]
    )
    with pytest.raises(RunError, match=f"{option} must be an integer >= 1"):
        batch_flow(manifest, str(tmp_path / "out"), model=str(tiny_model_dir), **{option: 0})


def test_memory_filesystem_output_and_cache(tiny_model_dir, inputs, tmp_path):
    manifest = write_manifest(
        inputs / "manifest.parquet",
        [
            {"video_id": "a", "image": "a.png", "caption": "a photo", "prompts": ["a dog"]},
        ],
    )
    output, cache = "memory://flow-test/out", "memory://flow-test/cache"
    summary = batch_flow(manifest, output, cache=cache, model=str(tiny_model_dir))
    assert summary["done"] == 1
    fs = fsspec.filesystem("memory")
    assert fs.exists("/flow-test/out/a/metadata.json") and fs.exists("/flow-test/out/a/video.mp4")
    assert fs.ls("/flow-test/cache/artifacts/keyframes")
    before = COMPUTED.copy()
    fs.rm("/flow-test/out/a", recursive=True)
    assert batch_flow(manifest, output, cache=cache, model=str(tiny_model_dir))["done"] == 1
    assert COMPUTED == before  # resumed from the memory:// cache


def test_remote_result_storage_is_configured_once_per_run(tiny_model_dir, tmp_path, monkeypatch):
    from prefect.filesystems import RemoteFileSystem

    saves = []
    save = RemoteFileSystem.save

    def counted(self, *args, **kwargs):
        saves.append(self.basepath)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(RemoteFileSystem, "save", counted)
    rows = [{"video_id": f"r{i}", "source_prompt": "a red car", "prompts": ["a blue car"]} for i in range(3)]
    manifest = write_manifest(tmp_path / "manifest.parquet", rows)
    output, cache = str(tmp_path / "out"), f"memory://once-{uuid.uuid4().hex}/cache"
    state = batch_flow(
        manifest, output, cache=cache, model=str(tiny_model_dir), chunk_rows=1, return_state=True
    )
    assert state.result()["done"] == 3 and len(chunk_runs(state)) == 3
    assert saves == [f"{cache}/prefect"]  # one block for the run, not one per span
    # a rerun with every video complete submits no task, so it configures no result storage at all
    assert batch_flow(manifest, output, cache=cache, model=str(tiny_model_dir), chunk_rows=1)["cached"] == 3
    assert saves == [f"{cache}/prefect"]


def test_missing_artifact_is_recomputed_despite_prefect_record(tiny_model_dir, inputs, tmp_path):
    manifest = write_manifest(
        inputs / "manifest.parquet",
        [
            {"video_id": "a", "image": "a.png", "caption": "a photo", "prompts": ["a dog"]},
        ],
    )
    output = str(tmp_path / "out")
    batch_flow(manifest, output, model=str(tiny_model_dir))
    fs = fsspec.filesystem("file")
    fs.rm(f"{output}/a", recursive=True)
    for path in fs.glob(f"{output}/.cache/artifacts/frames/*"):
        fs.rm(path)
    before = COMPUTED.copy()
    assert batch_flow(manifest, output, model=str(tiny_model_dir))["done"] == 1
    assert COMPUTED - before == {"frames": 1}


def test_run_cli_exit_statuses(tiny_model_dir, inputs, tmp_path, capsys):
    good = write_manifest(
        inputs / "good.parquet", [{"video_id": "a", "image": "a.png", "prompts": ["a dog"]}]
    )
    mixed = write_manifest(
        inputs / "mixed.parquet",
        [
            {"video_id": "a", "image": "a.png", "prompts": ["a dog"]},
            {"video_id": "b", "image": "nope.png", "prompts": ["a dog"]},
        ],
    )
    model = ["--model", str(tiny_model_dir), "--no-progress"]
    assert main(["run", good, "--output", str(tmp_path / "o1"), *model]) == 0
    assert main(["run", mixed, "--output", str(tmp_path / "o2"), *model]) == 3
    (inputs / "junk.parquet").write_text("not parquet")
    capsys.readouterr()
    assert main(["run", str(inputs / "junk.parquet"), "--output", str(tmp_path / "o3"), *model]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "junk.parquet" in err[0]
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", good, "--output", str(blocker / "sub"), *model]) == 1
    assert main(["run", good, "--output", str(tmp_path / "o4"), "--storage-options", "{bad", *model]) == 2
    assert main(["run", good, "--output", str(tmp_path / "o5"), "--limit", "0", *model]) == 0
    assert results(str(tmp_path / "o5")) == []
    assert main(["validate", mixed]) == 1
    assert "row 1 (video_id=b): image" in capsys.readouterr().out
    assert main(["validate", good]) == 0


def test_extra_columns_never_overwrite_result_columns(tmp_path):
    """A manifest column named like a result column (here `status`) cannot fake a row's outcome."""
    import pyarrow as pa

    from stillmotion.flows.tracking import RunTracker
    from stillmotion.storage import OutputStore

    extras = [pa.field("status", pa.string()), pa.field("tag", pa.string())]
    tracker = RunTracker(OutputStore(str(tmp_path)), 1, extras, show_progress=False)
    tracker.add(0, "a", {"status": "ok", "tag": "x"}, status="failed", error="boom")
    tracker.close()
    [row] = pq.read_table(tmp_path / "results.parquet").to_pylist()
    assert row["status"] == "failed" and row["error"] == "boom" and row["tag"] == "x"
