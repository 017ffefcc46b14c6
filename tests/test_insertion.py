"""Frames between key frames: the spline, re-timed by distance (adaptive), motion-compensated (motion)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from prefect.testing.utilities import prefect_test_harness

from stillmotion.flows import batch_flow
from stillmotion.models import MethodParams
from stillmotion.models.insertion import motion_frames, spline_frames
from stillmotion.models.method import decode_keyframes, render_frames, render_keyframes, synthetic_noise
from stillmotion.tasks import COMPUTED


def steps(latents: torch.Tensor) -> np.ndarray:
    return (latents[1:] - latents[:-1]).flatten(1).norm(dim=1).numpy()


def test_adaptive_timing_makes_every_step_the_same_size_and_ends_on_the_key_frame():
    """Re-timed by what the frames look like (here the latents themselves; in render_frames the VAE
    decode), the steps between frames are even."""
    torch.manual_seed(0)
    source = torch.zeros(1, 4, 2, 2)
    # key frames that move a lot first, then little (the log curve's shape): uneven steps on the spline
    segment = torch.stack([torch.full((4, 2, 2), value) for value in (0.6, 0.8, 0.9, 1.0)])
    uniform = torch.cat([source, spline_frames(source, segment, keyframes=4, frames=8)])
    same = spline_frames(source, segment, keyframes=4, frames=8, appearance=lambda latents: latents)
    adaptive = torch.cat([source, same])
    assert steps(uniform).max() / steps(uniform).mean() > 1.5
    assert steps(adaptive).max() / steps(adaptive).mean() < 1.05
    torch.testing.assert_close(adaptive[-1], segment[-1])
    # a straight segment at even speed is already even: adaptive changes nothing
    even = torch.stack([torch.full((4, 2, 2), value) for value in (0.25, 0.5, 0.75, 1.0)])
    torch.testing.assert_close(
        spline_frames(source, even, 4, 8, appearance=lambda latents: latents),
        spline_frames(source, even, 4, 8),
        atol=1e-6,
        rtol=0,
    )


def square_at(x: int) -> np.ndarray:
    image = np.zeros((64, 64, 3), np.uint8)
    image[20:36, x : x + 16] = 255
    return image


def left_edge(image: np.ndarray) -> int:
    return int(np.argmax(image[28, :, 0] > 128))


def test_motion_frames_follow_the_motion_and_keep_the_key_frames():
    anchors = np.stack([square_at(10), square_at(25), square_at(40)])  # t = 0, 1, 2
    frames = motion_frames(anchors, keyframes=2, frames=8)  # t = 0.25 .. 2
    assert frames.shape == (8, 64, 64, 3)
    edges = [left_edge(frame) for frame in frames]
    assert edges == sorted(edges) and abs(edges[1] - 17.5) <= 2  # t = 0.5: moved half way, not blended
    assert np.array_equal(frames[3], anchors[1]) and np.array_equal(frames[7], anchors[2])
    assert motion_frames(anchors, keyframes=2, frames=3).shape[0] == 3  # N/K not an integer


def test_render_frames_with_each_insertion_ends_segments_on_their_key_frames(sd):
    params = MethodParams(keyframes=2, frames=4, steps=3, seed=3)
    noise = synthetic_noise(sd, 3)
    rendered = render_keyframes(sd, noise, "a red car", ["a blue car", "a cat"], params, synthetic=True)
    keyframes = decode_keyframes(sd, rendered, params).clamp(-1, 1)
    videos = {}
    for insertion in ("spline", "adaptive", "motion"):
        frames = render_frames(sd, rendered, MethodParams(**{**params.to_dict(), "insertion": insertion}))
        assert frames.shape == (1 + 2 * 4, 3, 64, 64)
        for segment in range(2):  # frame 4 of each segment is its last key frame (to uint8 precision)
            last = frames[1 + 4 * segment + 3].clamp(-1, 1)
            torch.testing.assert_close(last, keyframes[2 * segment + 1], atol=1 / 127.5 + 1e-5, rtol=0)
        videos[insertion] = frames
    assert not torch.equal(videos["spline"], videos["adaptive"])
    assert not torch.equal(videos["spline"], videos["motion"])
    with pytest.raises(ValueError, match="insertion must be one of spline, adaptive, motion"):
        MethodParams(insertion="morph")


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_insertion_is_a_manifest_column_and_changes_only_the_frames(prefect_server, tiny_model_dir, tmp_path):
    insertions = ["spline", "adaptive", "motion", None]
    table = pa.table(
        {
            "video_id": ["spline", "adaptive", "motion", "default"],
            "source_prompt": ["a red car"] * 4,
            "prompts": [["a blue car"]] * 4,
            "seed": [5] * 4,
            "steps": [3] * 4,
            "keyframes": [2] * 4,
            "frames": [4] * 4,
            "insertion": insertions,
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    before = COMPUTED.copy()
    output = str(tmp_path / "out")  # one row at a time: a later row finds the key frames made
    summary = batch_flow(str(tmp_path / "m.parquet"), output, model=str(tiny_model_dir), in_flight=1)
    assert summary["done"] == 4
    delta = COMPUTED - before
    assert delta["keyframes"] == 1 and delta["frames"] == 3  # one set of key frames; the default: adaptive
    ids = table.column("video_id").to_pylist()
    params = [json.loads((tmp_path / "out" / v / "metadata.json").read_text())["params"] for v in ids]
    assert [p["insertion"] for p in params] == ["spline", "adaptive", "motion", "adaptive"]
