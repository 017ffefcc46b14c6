"""The batch flow on the tiny model: results, failures, publishing, caching and resume."""

import json
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
        "seed",
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
            ("seed", pa.int64()),
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

    # 2. a published video lost: its stages run again, each finds its own artifact: nothing is computed
    #    (no Prefect cache: the artifact store is the only one)
    fsspec.filesystem("file").rm(f"{output}/b", recursive=True)
    state = batch_flow(manifest, output, model=str(tiny_model_dir), return_state=True)
    assert COMPUTED == before
    states = task_states(state)
    assert set(states) == {"source", "caption", "invert", "keyframes", "frames", "publish"}, states
    assert all(names == ["Completed"] for names in states.values()), states
    assert (Path(output) / "b" / "metadata.json").exists()

    # 3. one row's prompts change: it is made again without --force, and only its key frames and what
    #    follows are recomputed (caption and inversion reused)
    write_manifest(
        inputs / "manifest.parquet",
        [
            {"video_id": "a", "image": "a.png", "prompts": ["a dog"]},
            {"video_id": "b", "image": "b.png", "prompts": ["a cat", "a fish"]},
            {"video_id": "s", "source_prompt": "a red car", "prompts": ["a blue car"]},
        ],
    )
    before = COMPUTED.copy()
    summary = batch_flow(manifest, output, model=str(tiny_model_dir), in_flight=2)
    assert COMPUTED - before == {"keyframes": 1, "frames": 1, "encode": 1, "scores": 1}
    assert summary["done"] == 1 and summary["cached"] == 2 and summary["changed"] == 1
    table = {row["video_id"]: row for row in results(output)}
    assert table["b"]["status"] == "ok" and table["b"]["changed"] and not table["b"]["cached"]
    assert table["a"]["cached"] and not table["a"]["changed"]
    metadata = json.loads((Path(output) / "b" / "metadata.json").read_text())
    assert metadata["prompts"] == ["a cat", "a fish"] and metadata["fingerprint"] == table["b"]["fingerprint"]
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


def test_no_prefect_result_record_is_written_or_read(tiny_model_dir, tmp_path, monkeypatch):
    """The artifact store is the only cache: no result storage block, no record under CACHE/prefect, and a
    record planted there (naming a decoder module, as Prefect's JSON serializer would import) is never
    read: the module is not imported."""
    from prefect.filesystems import RemoteFileSystem

    saves = []
    monkeypatch.setattr(RemoteFileSystem, "save", lambda self, *a, **k: saves.append(self.basepath))
    modules = tmp_path / "modules"
    modules.mkdir()
    marker = tmp_path / "imported"
    (modules / "planted_decoder.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(modules))
    rows = [{"video_id": f"r{i}", "source_prompt": "a red car", "prompts": ["a blue car"]} for i in range(2)]
    manifest = write_manifest(tmp_path / "manifest.parquet", rows)
    output = str(tmp_path / "out")
    assert batch_flow(manifest, output, model=str(tiny_model_dir))["done"] == 2
    cache = Path(output) / ".cache"
    assert not (cache / "prefect").exists() and saves == []
    # a record for every artifact, as a run with Prefect caching wrote them, naming a foreign decoder
    (cache / "prefect").mkdir()
    for artifact in (cache / "artifacts").glob("*/*.json"):
        key = f"{artifact.parent.name}-{artifact.stem}"
        record = {
            "metadata": {"serializer": {"type": "json", "object_decoder": "planted_decoder.decode"}},
            "result": json.dumps({"key": f"{artifact.parent.name}/{artifact.stem}"}),
        }
        (cache / "prefect" / key).write_text(json.dumps(record))
    for video_id in ("r0", "r1"):
        fsspec.filesystem("file").rm(f"{output}/{video_id}", recursive=True)
    before = COMPUTED.copy()
    assert batch_flow(manifest, output, model=str(tiny_model_dir))["done"] == 2
    assert COMPUTED == before  # resumed from the artifacts alone
    assert not marker.exists()


def test_missing_artifact_is_recomputed(tiny_model_dir, inputs, tmp_path):
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


def test_a_changed_parameter_or_source_image_remakes_the_row(tiny_model_dir, inputs, tmp_path):
    rows = [
        {"video_id": "a", "image": "a.png", "caption": "a photo", "prompts": ["a dog"]},
        {"video_id": "s", "source_prompt": "a red car", "prompts": ["a blue car"]},
    ]
    manifest = write_manifest(inputs / "manifest.parquet", rows)
    output = str(tmp_path / "out")
    assert batch_flow(manifest, output, model=str(tiny_model_dir))["done"] == 2
    # frames: the frames and what follows are made again, the key frames reused
    write_manifest(inputs / "manifest.parquet", [rows[0], {**rows[1], "frames": 3}])
    before = COMPUTED.copy()
    summary = batch_flow(manifest, output, model=str(tiny_model_dir))
    assert summary["changed"] == 1 and COMPUTED - before == {"frames": 1, "encode": 1, "scores": 1}
    assert json.loads((Path(output) / "s" / "metadata.json").read_text())["frame_count"] == 1 + 3
    # the image replaced under the same path: made again from the new bytes
    write_image(inputs / "a.png", seed=9)
    before = COMPUTED.copy()
    summary = batch_flow(manifest, output, model=str(tiny_model_dir))
    assert summary["changed"] == 1 and {"invert", "keyframes"} <= set(COMPUTED - before)
    table = {row["video_id"]: row for row in results(output)}
    assert table["a"]["changed"] and table["s"]["cached"]


def test_generate_runs_the_batch_stages_and_makes_the_same_video(tiny_model_dir, inputs, tmp_path):
    manifest = write_manifest(
        inputs / "manifest.parquet", [{"video_id": "a", "image": "a.png", "prompts": ["a dog"], "seed": 0}]
    )
    output = tmp_path / "out"
    assert batch_flow(manifest, str(output), model=str(tiny_model_dir))["done"] == 1
    fast = ["--steps", "3", "--keyframes", "2", "--frames", "2", "--model", str(tiny_model_dir)]
    args = ["generate", "--image", str(inputs / "a.png"), *fast, "--cache", str(output / ".cache")]
    before = COMPUTED.copy()
    assert main([*args, "--prompt", "a dog", "--out", str(tmp_path / "g")]) == 0
    assert COMPUTED == before  # every stage found the batch run's artifact under the key it made
    made, batch = (
        json.loads((folder / "metadata.json").read_text()) for folder in (tmp_path / "g", output / "a")
    )
    assert (tmp_path / "g" / "video.mp4").read_bytes() == (output / "a" / "video.mp4").read_bytes()
    assert made["artifacts"] == batch["artifacts"] and made["fingerprint"] == batch["fingerprint"]
    assert made["computed_with"] == batch["computed_with"] and made["device"] == batch["device"] == "cpu"
    different = {key for key in made if made[key] != batch[key]}
    assert different == {"video_id", "created"}, different  # the stage records hold the timings
    # another prompt on the same cache: the caption and the inversion are reused
    before = COMPUTED.copy()
    assert main([*args, "--prompt", "a cat", "--out", str(tmp_path / "g2")]) == 0
    assert set(COMPUTED - before) == {"keyframes", "frames", "encode", "scores"}
    # no --cache: nothing is kept, and the same bytes come out of a fresh temporary cache
    assert main([*args[:-2], "--prompt", "a dog", "--out", str(tmp_path / "g3")]) == 0
    assert (tmp_path / "g3" / "video.mp4").read_bytes() == (output / "a" / "video.mp4").read_bytes()


def test_a_note_in_the_model_folder_recomputes_nothing(tiny_model_dir, inputs, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    manifest = write_manifest(
        inputs / "manifest.parquet", [{"video_id": "a", "image": "a.png", "prompts": ["a dog"]}]
    )
    output = str(tmp_path / "out")
    args = ["run", manifest, "--output", output, "--model", str(model), "--no-progress"]
    assert main(args) == 0
    (model / "notes").mkdir()
    (model / "notes" / "x.txt").write_text("trained on the toy world, seed 0")
    (model / "train.log").write_text("step 1 loss 0.5\n")
    shutil.rmtree(f"{output}/a")  # the stages run again: each finds its artifact under the same key
    before = COMPUTED.copy()
    assert main(args) == 0
    assert COMPUTED == before
    assert results(output)[0]["status"] == "ok" and not results(output)[0]["changed"]


def test_a_failure_on_the_rows_own_input_is_not_retried_until_it_changes(
    tiny_model_dir, inputs, tmp_path, monkeypatch, capsys
):
    manifest = write_manifest(
        inputs / "manifest.parquet",
        [
            {"video_id": "a", "image": "a.png", "caption": "a photo", "prompts": ["a dog"]},
            {"video_id": "missing", "image": "later.png", "caption": "a photo", "prompts": ["a dog"]},
            {"video_id": "corrupt", "image": "corrupt.png", "caption": "a photo", "prompts": ["a dog"]},
        ],
    )
    output = str(tmp_path / "out")
    args = ["run", manifest, "--output", output, "--model", str(tiny_model_dir), "--no-progress"]
    assert main(args) == 3
    first = {row["video_id"]: row for row in results(output)}
    # the rerun reports the same failures without Prefect or a model: the batch flow never starts
    import stillmotion.cli.commands as commands

    monkeypatch.setattr(commands, "_run", lambda *a, **k: pytest.fail("the batch flow started"))
    runtime.release_models()
    assert main(args) == 3
    again = {row["video_id"]: row for row in results(output)}
    for video_id in ("missing", "corrupt"):
        assert again[video_id]["status"] == "failed" and again[video_id]["cached"]
        assert again[video_id]["error"] == first[video_id]["error"]
    assert again["a"]["cached"] and runtime.loaded_models() == 0
    # the missing image appears: its row is made; the corrupt one is still not retried
    monkeypatch.undo()
    write_image(inputs / "later.png", seed=4)
    before = COMPUTED.copy()
    assert main(args) == 3
    final = {row["video_id"]: row for row in results(output)}
    assert final["missing"]["status"] == "ok" and not final["missing"]["cached"]
    assert final["corrupt"]["cached"] and (COMPUTED - before)["invert"] == 1
    assert not (Path(output) / ".logs" / "missing.json").exists()  # the failure record went with it
