"""Nothing lost, stale or mislabelled: publishing, cache keys, the model a worker loads, results rows."""

import json
import shutil
import threading
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.testing.utilities import prefect_test_harness

from stillmotion.cli import main
from stillmotion.flows import batch_flow
from stillmotion.models import MethodParams, ModelNotAvailable
from stillmotion.models.loading import inspect_model, load_stable_diffusion
from stillmotion.requests import VideoRequest, resolved
from stillmotion.storage import OutputStore, Store
from stillmotion.tasks import COMPUTED, Job
from stillmotion.tasks.stages import keyframes_key, model_key

FAST = {"steps": 3, "keyframes": 2, "frames": 2}


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def synthetic_manifest(path: Path, ids: list, prompts=None) -> str:
    rows = len(ids)
    table = pa.table(
        {
            "video_id": pa.array(ids, pa.string()),
            "source_prompt": ["a red car"] * rows,
            "prompts": prompts if prompts is not None else pa.array([["a blue car"]] * rows),
            **{name: [value] * rows for name, value in FAST.items()},
        }
    )
    pq.write_table(table, path)
    return str(path)


def results(output) -> list[dict]:
    return pq.read_table(Path(output) / "results.parquet").to_pylist()


def test_publishing_one_id_never_touches_another_ids_staging(tmp_path, monkeypatch):
    """`cat` published while `cat-2` is halfway through its own publish: both end complete."""
    store = OutputStore(str(tmp_path))
    halfway, release = threading.Event(), threading.Event()
    write_bytes = Store.write_bytes

    def paused(self, relative, data):
        if ".staging" in relative and "cat-2" in relative and relative.endswith("metadata.json"):
            halfway.set()
            assert release.wait(30)
        write_bytes(self, relative, data)

    monkeypatch.setattr(Store, "write_bytes", paused)
    files = {"video.mp4": b"mp4", "keyframes/000.png": b"png"}
    errors = []

    def publish_cat_2():
        try:
            store.publish("cat-2", files, {"video_id": "cat-2"})
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    other = threading.Thread(target=publish_cat_2)
    other.start()
    assert halfway.wait(30)
    store.publish("cat", files, {"video_id": "cat"})
    release.set()
    other.join(30)
    assert not errors
    for video_id in ("cat", "cat-2"):
        assert store.is_complete(video_id)
        assert (tmp_path / video_id / "video.mp4").read_bytes() == b"mp4"
    assert not list((tmp_path / ".staging").iterdir())


def test_generate_replaces_the_whole_out_folder(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "video"
    common = ["generate", "--model", str(tiny_model_dir), "--source-prompt", "a red car", "--prompt", "a bus"]
    common += ["--steps", "2", "--out", str(out)]
    assert main([*common, "--keyframes", "4"]) == 0
    assert len(list((out / "keyframes").iterdir())) == 4
    assert main([*common, "--keyframes", "1"]) == 0
    assert sorted(p.name for p in (out / "keyframes").iterdir()) == ["000.png"]
    assert json.loads((out / "metadata.json").read_text())["keyframe_count"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["video"]  # no staging left beside it

    # an --out that is a file, or a folder of something else, is refused in one line, untouched
    (tmp_path / "file").write_text("mine")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    capsys.readouterr()
    for target in (tmp_path / "file", tmp_path / "notes"):
        assert main([*common[:-1], str(target)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(target) in err[0]
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "notes" / "todo.txt").exists()


def job_for(model: str, dtype: str = "fp32") -> Job:
    info = inspect_model(model)
    request = VideoRequest("v", ("a blue car",), MethodParams(**FAST), source_prompt="a red car")
    request = resolved(request, info.defaults)[0]
    return Job(
        "v", request, "out", "cache", info.model_id, info.path, info.revision, info.image_size, "cpu", dtype
    )


def test_cache_keys_hold_the_weights_dtype_and_device_not_the_spelling(tiny_model_dir):
    caption = {"caption": "a red car"}
    plain, spelled = str(tiny_model_dir), f"{tiny_model_dir}/../{Path(tiny_model_dir).name}/"
    key = keyframes_key(job_for(plain), None, caption)
    assert keyframes_key(job_for(spelled), None, caption) == key  # one folder, two spellings: one key
    assert keyframes_key(job_for(plain, "bf16"), None, caption) != key
    assert model_key(job_for(plain, "bf16"))["dtype"] == "bfloat16"
    assert model_key(job_for(plain))["device"] == "cpu"


def test_a_worker_refuses_weights_other_than_the_keyed_ones(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    job = job_for(str(model))
    assert job.model_source == str(model.resolve())  # an absolute path, whatever the worker's folder
    load_stable_diffusion(job.model_source, device="cpu", revision=job.revision)
    config = model / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("{", '{"changed": 1, ', 1))
    with pytest.raises(ModelNotAvailable, match="has changed"):
        load_stable_diffusion(job.model_source, device="cpu", revision=job.revision)


def test_artifacts_of_one_dtype_are_not_reused_for_another(tiny_model_dir, tmp_path):
    manifest = synthetic_manifest(tmp_path / "m.parquet", ["s"])
    cache = str(tmp_path / "cache")
    model = str(tiny_model_dir)
    before = COMPUTED.copy()
    batch_flow(manifest, str(tmp_path / "fp32"), cache=cache, model=model, dtype="fp32")
    batch_flow(manifest, str(tmp_path / "bf16"), cache=cache, model=model, dtype="bf16")
    assert (COMPUTED - before)["keyframes"] == 2  # bf16 did not take the fp32 key frames
    batch_flow(manifest, str(tmp_path / "fp32-again"), cache=cache, model=model, dtype="fp32")
    assert (COMPUTED - before)["keyframes"] == 2  # but fp32 finds its own
    for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16"), ("fp32-again", "float32")):
        metadata = json.loads((tmp_path / name / "s" / "metadata.json").read_text())
        assert metadata["dtype"] == dtype and metadata["device"] == "cpu"
        assert {stage["dtype"] for stage in metadata["computed_with"].values() if "dtype" in stage} == {dtype}


def test_prefect_result_records_are_never_read(tiny_model_dir, tmp_path, monkeypatch):
    """No stage persists a Prefect result or looks one up: records planted where Prefect would keep them
    (declaring pickle) are never unpickled, and the run resumes from the artifacts alone."""
    manifest = synthetic_manifest(tmp_path / "m.parquet", ["s"])
    output = tmp_path / "out"
    batch_flow(manifest, str(output), model=str(tiny_model_dir))
    assert not (output / ".cache" / "prefect").exists()
    import cloudpickle

    records = output / ".cache" / "prefect"
    records.mkdir()
    for artifact in (output / ".cache" / "artifacts").glob("*/*.json"):
        record = {"metadata": {"serializer": {"type": "pickle", "picklelib": "cloudpickle"}}, "result": "x"}
        (records / f"{artifact.parent.name}-{artifact.stem}").write_text(json.dumps(record))
    unpickled = []
    monkeypatch.setattr(cloudpickle, "loads", lambda *a, **k: unpickled.append(a))
    shutil.rmtree(output / "s")
    before = COMPUTED.copy()
    assert batch_flow(manifest, str(output), model=str(tiny_model_dir))["done"] == 1
    assert not unpickled
    assert COMPUTED == before  # the artifacts were intact: nothing recomputed


def test_results_describe_every_existing_video_whatever_limit_and_force(
    tiny_model_dir, tmp_path, monkeypatch
):
    manifest = synthetic_manifest(tmp_path / "m.parquet", ["a", "b", "c", "d"])
    output = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    batch_flow(manifest, "out", model=str(tiny_model_dir), limit=3)
    first = {row["video_id"]: row for row in results(output)}
    assert sorted(first) == ["a", "b", "c"]
    assert first["a"]["video"] == str(output / "a" / "video.mp4")  # absolute, not relative to the cwd

    summary = batch_flow(manifest, str(output), model=str(tiny_model_dir), limit=1, force=True)
    assert summary["done"] == 1 and summary["rows"] == 1
    table = results(output)
    assert [row["video_id"] for row in table] == ["a", "b", "c"]  # d never made: not described
    assert [row["cached"] for row in table] == [False, True, True]
    # a cached row keeps the seconds it took to make
    assert [row["seconds"] for row in table[1:]] == [first["b"]["seconds"], first["c"]["seconds"]]
    assert all(row["seconds"] > 0 for row in table)


def test_bad_ids_and_bad_text_fail_their_own_rows_and_keep_the_id(tiny_model_dir, tmp_path):
    ids = ["good", "../escape", "bad id with spaces", "", "results.parquet", "Report.HTML", "bad-text"]
    undecodable = pa.array([b"a blue car", b"a bl\xffue car"], pa.binary()).view(pa.string())
    prompts = pa.ListArray.from_arrays([0, *[1] * 6, 2], undecodable)  # row 6 holds the bad prompt
    manifest = synthetic_manifest(tmp_path / "m.parquet", ids, prompts=prompts)
    output = tmp_path / "out"
    summary = batch_flow(manifest, str(output), model=str(tiny_model_dir))
    assert summary["done"] == 1 and summary["failed"] == 6
    table = results(output)
    assert [row["video_id"] for row in table] == ids  # as given: data in a table, never a path
    assert [row["error"].split(":")[0] for row in table[1:]] == ["video_id"] * 5 + ["prompts"]
    assert "reserved" in table[4]["error"] and "reserved" in table[5]["error"]
    assert "UTF-8" in table[6]["error"]
    assert (output / "results.parquet").is_file()
    assert [row["status"] for row in table] == ["ok"] + ["failed"] * 6
    assert {error["video_id"] for error in summary["failures"]} == set(ids[1:])
    # validate reports the same rows instead of crashing
    assert main(["validate", manifest]) == 1


def test_device_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    manifest = synthetic_manifest(tmp_path / "m.parquet", ["a"])
    generate = ["generate", "--model", str(tiny_model_dir), "--source-prompt", "a", "--prompt", "b"]
    run = ["run", manifest, "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir)]
    run.append("--no-progress")
    import torch

    devices = ["tpu", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        for command in (generate + ["--out", str(tmp_path / "g")], run):
            capsys.readouterr()
            if device == "tpu":  # a name that is no device is a usage error: argparse's usage, one line
                with pytest.raises(SystemExit) as exited:
                    main([*command, "--device", device])
                assert exited.value.code == 2
                err = capsys.readouterr().err.strip().splitlines()[-1:]
            else:
                assert main([*command, "--device", device]) == 1, (command[0], device)
                err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and device in err[0] and "Traceback" not in err[0], err
    assert not fsspec.filesystem("file").exists(str(tmp_path / "out" / "a"))
    assert not (tmp_path / "out" / "results.parquet").exists()  # stopped at once, no row failed


def test_small_user_facing_errors(tmp_path, capsys):
    from stillmotion.models import ImageError, open_image

    for data, reason in ((b"not an image at all", "not a known image format"), (b"", "empty")):
        with pytest.raises(ImageError) as raised:
            open_image(data, "photos/x.png")
        assert "photos/x.png" in str(raised.value) and reason in str(raised.value)
        assert " at 0x" not in str(raised.value)

    def usage(*args):
        with pytest.raises(SystemExit) as raised:
            raise SystemExit(main(["generate", "--out", str(tmp_path / "o"), *args]))
        return raised.value.code, capsys.readouterr().err

    code, err = usage("--image", "x.png", "--prompt", "a", "--prompt", "")
    assert code == 2 and "prompt 2" in err and "blank" in err
    code, err = usage("--source-prompt", "a car", "--caption", "a car", "--prompt", "a bus")
    assert code == 2 and "--caption" in err
    for scale in ("0", "0.5"):
        code, err = usage("--source-prompt", "a car", "--prompt", "a bus", "--cfg-scale", scale)
        assert code == 2 and "cfg_scale" in err and ">= 1" in err
    with pytest.raises(SystemExit) as raised:
        main(["--version"])
    assert raised.value.code == 0 and capsys.readouterr().out.startswith("stillmotion ")
