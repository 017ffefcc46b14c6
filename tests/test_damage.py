"""A damaged cache heals: every artifact read is checked against the sha256 in its sidecar, and a
damaged one is deleted, recomputed (upstream included) and counted in the run's summary."""

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from prefect.testing.utilities import prefect_test_harness

from stillmotion.flows import batch_flow
from stillmotion.flows.batch import REPAIR_ROUNDS
from stillmotion.storage import ArtifactStore, DamagedArtifact
from stillmotion.tasks import COMPUTED

FAST = {"steps": 3, "keyframes": 2, "frames": 2}


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_every_read_checks_the_data_against_its_sidecar(tmp_path):
    store = ArtifactStore(str(tmp_path))
    store.put_tensors("frames/k", {"x": torch.arange(1000.0)}, record={"seconds": 1.0})
    assert store.intact("frames/k", "safetensors")
    assert store.get_json("frames/k")["seconds"] == 1.0
    data = tmp_path / "frames" / "k.safetensors"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # cut in half
    with pytest.raises(DamagedArtifact, match="does not match its sha256"):
        store.get_tensors("frames/k")
    assert not data.exists() and not (tmp_path / "frames" / "k.json").exists()  # deleted, both parts

    store.put_file("encode/k", "mp4", b"\0" * 4096, record={})
    video = tmp_path / "encode" / "k.mp4"
    flipped = bytearray(video.read_bytes())
    flipped[1000:1064] = bytes(b ^ 0xFF for b in flipped[1000:1064])
    video.write_bytes(bytes(flipped))
    assert not store.intact("encode/k", "mp4") and not video.exists()

    store.put_file("source/k", "png", b"png bytes", record={"fit": "crop"})
    (tmp_path / "source" / "k.json").write_text("{not json")
    with pytest.raises(DamagedArtifact, match="record is unreadable"):
        store.get_file("source/k", "png")
    assert not (tmp_path / "source" / "k.png").exists()


def manifest(path: Path) -> str:
    table = pa.table(
        {
            "video_id": ["v"],
            "source_prompt": ["a red car"],
            "prompts": [["a blue car"]],
            **{name: [value] for name, value in FAST.items()},
        }
    )
    pq.write_table(table, path)
    return str(path)


def only(folder: Path, pattern: str) -> Path:
    (path,) = folder.glob(pattern)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def made(tiny_model_dir, tmp_path):
    """One finished synthetic row: (run, output folder, artifact folder, the video's sha256)."""
    rows, output = manifest(tmp_path / "m.parquet"), tmp_path / "out"

    def run() -> dict:
        return batch_flow(rows, str(output), model=str(tiny_model_dir))

    assert run()["done"] == 1
    return run, output, output / ".cache" / "artifacts", sha(output / "v" / "video.mp4")


def test_truncated_frames_are_recomputed_and_counted(made):
    run, output, artifacts, video = made
    frames = only(artifacts, "frames/*.safetensors")
    frames.write_bytes(frames.read_bytes()[: frames.stat().st_size // 2])
    shutil.rmtree(output / "v")  # the video is gone: the row runs again
    before = COMPUTED.copy()
    summary = run()
    # found by the frames stage's own check of its artifact (the artifact store is the only cache: no
    # Prefect record skips the stage), so it is made again in place: no resubmission of the row
    assert (summary["done"], summary["repaired"], summary["failed"]) == (1, 0, 0)
    assert COMPUTED - before == {"frames": 1}  # the damaged artifact only; its intact inputs reused
    assert sha(output / "v" / "video.mp4") == video
    assert not (output / ".logs" / "v.txt").exists()  # the healed row leaves no failure log
    assert pq.read_table(output / "results.parquet").column("status").to_pylist() == ["ok"]


def test_a_flipped_encode_artifact_is_never_published(made):
    run, output, artifacts, video = made
    encoded = only(artifacts, "encode/*.mp4")
    data = bytearray(encoded.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    encoded.write_bytes(bytes(data))
    (output / "v" / "metadata.json").unlink()
    before = COMPUTED.copy()
    # found by the encode step's own check (inside the publish task) and encoded again: no resubmission
    assert run()["repaired"] == 0
    assert COMPUTED - before == {"encode": 1}
    assert sha(output / "v" / "video.mp4") == video  # the intact video, not the damaged bytes
    metadata = json.loads((output / "v" / "metadata.json").read_text())
    assert metadata["hashes"]["video.mp4"] == video


def test_damage_upstream_is_found_when_a_later_stage_reads_it(made):
    run, output, artifacts, video = made
    keyframes = only(artifacts, "keyframes/*.safetensors")
    data = bytearray(keyframes.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])  # inside the tensors: would still load
    keyframes.write_bytes(bytes(data))
    for path in artifacts.glob("frames/*"):
        path.unlink()  # frames must be made again, from the damaged key frames
    shutil.rmtree(output / "v")
    before = COMPUTED.copy()
    # the key frames stage checks its own artifact first (no Prefect record skips it), finds the damage
    # and makes it again in place; the frames are then made from the intact key frames
    assert run()["repaired"] == 0
    assert COMPUTED - before == {"keyframes": 1, "frames": 1}
    assert sha(output / "v" / "video.mp4") == video


def test_damage_that_keeps_coming_fails_the_row_after_the_repair_rounds(made, monkeypatch):
    run, output, artifacts, _ = made
    real, reads = ArtifactStore.get_file, []

    def always_damaged(self, key, ext):
        if key.startswith("encode/"):
            reads.append(key)
            raise self._damaged(key, ext, "injected")
        return real(self, key, ext)

    monkeypatch.setattr(ArtifactStore, "get_file", always_damaged)
    shutil.rmtree(output / "v")
    before = COMPUTED.copy()
    summary = run()
    assert (summary["done"], summary["failed"]) == (0, 1)
    assert "damaged artifact" in summary["failures"][0]["error"]
    # encoded again once per submission (the first and each resubmission), no more
    assert (COMPUTED - before)["encode"] == 1 + REPAIR_ROUNDS
    assert reads
