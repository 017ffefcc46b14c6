"""Scores of every video: deterministic, cached as their own stage, the same in metadata.json and
results.parquet, and a missing scoring model leaves its scores out without failing a row."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.testing.utilities import prefect_test_harness

from stillmotion.flows import batch_flow
from stillmotion.flows.tracking import SCORE_NAMES
from stillmotion.metrics import basic_scores, near_empty
from stillmotion.models.scoring import find_scorers, load_scorers, model_scores
from stillmotion.tasks import COMPUTED

BASIC = {"structure", "structure_last", "mean_step", "worst_step", "worst_over_mean", "empty_frames"}


def disc(radius: float, tone: int = 200, size: int = 32) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size]
    inside = (xs - size / 2) ** 2 + (ys - size / 2) ** 2 <= radius**2
    return np.repeat((inside * tone).astype(np.uint8)[..., None], 3, axis=2)


def test_basic_scores_see_structure_jumps_and_empty_frames():
    source = disc(8)
    still = np.stack([source] * 5)
    scores = basic_scores(still, source)
    assert scores["structure"] == pytest.approx(1.0) and scores["mean_step"] == 0.0
    assert scores["empty_frames"] == 0.0
    growing = np.stack([disc(r) for r in (8, 8.5, 9, 9.5, 14)])  # small steps, then one big jump
    scores = basic_scores(growing, source)
    assert scores["worst_over_mean"] > 2.5 and scores["structure_last"] < scores["structure"] < 1.0
    faded = np.stack([source, disc(8, 100), np.zeros_like(source), np.zeros_like(source)])
    assert near_empty(faded).tolist() == [False, False, True, True]
    assert basic_scores(faded, source)["empty_frames"] == 0.5
    assert basic_scores(growing, source) == basic_scores(growing.copy(), source)  # deterministic


def test_model_scores_are_deterministic_and_follow_the_prompts(tiny_model_dir):
    found, missing = find_scorers(tiny_model_dir)
    assert set(found) == {"clip", "dino"} and not missing
    scorers = load_scorers(found)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    prompts = ["a red car", "a red car", "a blue car", "a blue car"]
    first = model_scores(scorers, frames, frames[0], prompts)
    assert first == model_scores(load_scorers(found), frames, frames[0], prompts)
    assert set(first) == {"clip_t", "clip_f", "dino_structure"}
    assert model_scores(scorers, frames, frames[0], ["a dog"] * 4)["clip_t"] != first["clip_t"]
    still = np.stack([frames[0]] * 5)
    same = model_scores(scorers, still, frames[0], prompts)
    assert same["dino_structure"] == pytest.approx(0.0, abs=1e-10) and same["clip_f"] == pytest.approx(1.0)
    assert first["dino_structure"] > 1e-4
    assert find_scorers(tiny_model_dir / "nowhere")[1].keys() == {"clip", "dino"}  # offline: none found


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def manifest(path, ids):
    table = pa.table(
        {
            "video_id": ids,
            "source_prompt": ["a red car"] * len(ids),
            "prompts": [["a blue car", "a green car"]] * len(ids),
            "steps": [3] * len(ids),
            "keyframes": [2] * len(ids),
            "frames": [2] * len(ids),
        }
    )
    pq.write_table(table, path)
    return str(path)


def results(output):
    return {r["video_id"]: r for r in pq.read_table(output / "results.parquet").to_pylist()}


def test_every_video_is_scored_in_metadata_and_results_and_scores_are_cached(
    prefect_server, tiny_model_dir, tmp_path
):
    rows, output = manifest(tmp_path / "m.parquet", ["a", "b"]), tmp_path / "out"
    before = COMPUTED.copy()
    assert batch_flow(rows, str(output), model=str(tiny_model_dir))["done"] == 2
    assert (COMPUTED - before)["scores"] == 2
    table = results(output)
    for video_id in "ab":
        scores = json.loads((output / video_id / "metadata.json").read_text())["scores"]
        assert set(scores) == BASIC | {"clip_t", "clip_f", "dino_structure"}
        assert {name: table[video_id][f"score_{name}"] for name in SCORE_NAMES} == scores
        assert 0 < scores["mean_step"] <= scores["worst_step"] and scores["empty_frames"] == 0.0

    # a rerun: complete rows keep their scores (from the last results.parquet, else metadata.json)
    before = COMPUTED.copy()
    batch_flow(rows, str(output), model=str(tiny_model_dir))
    assert results(output) == {v: {**table[v], "cached": True} for v in table} and COMPUTED == before
    (output / "results.parquet").unlink()
    batch_flow(rows, str(output), model=str(tiny_model_dir))
    assert results(output)["b"]["score_clip_t"] == table["b"]["score_clip_t"]

    # a lost video is republished from the cache: its scores are a cache hit, not recomputed
    shutil.rmtree(output / "a")
    before = COMPUTED.copy()
    batch_flow(rows, str(output), model=str(tiny_model_dir))
    assert COMPUTED == before
    assert (
        json.loads((output / "a" / "metadata.json").read_text())["scores"]["clip_t"]
        == table["a"]["score_clip_t"]
    )


def test_a_missing_scoring_model_is_said_once_and_leaves_only_its_scores_out(
    prefect_server, tiny_model_dir, tmp_path, capfd
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model, ignore=lambda folder, names: ["dino"] if "dino" in names else [])
    rows, output = manifest(tmp_path / "m.parquet", ["a", "b"]), tmp_path / "out"
    summary = batch_flow(rows, str(output), model=str(model))
    assert (summary["done"], summary["failed"]) == (2, 0)
    err = capfd.readouterr().err
    assert err.count("scores without a scoring model") == 1 and "DINO: facebook/dino-vits8" in err
    for video_id in "ab":
        scores = json.loads((output / video_id / "metadata.json").read_text())["scores"]
        assert set(scores) == BASIC | {"clip_t", "clip_f"}  # DINO's left out, CLIP's kept
        assert results(output)[video_id]["score_dino_structure"] is None

    # without scoring models at all (--no-model-scores): the basic scores, under their own key
    before = COMPUTED.copy()
    basic = str(tmp_path / "basic")
    batch_flow(rows, basic, cache=str(output / ".cache"), model=str(model), model_scores=False)
    assert (COMPUTED - before) == {"scores": 2}  # every other stage is a cache hit
    scores = json.loads((tmp_path / "basic" / "a" / "metadata.json").read_text())["scores"]
    assert set(scores) == BASIC
