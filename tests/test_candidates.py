"""Best of N: what varies, one batch for real-mode candidates, the choice, and N = 1 is today's video."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from prefect.testing.utilities import prefect_test_harness

from stillmotion.flows import batch_flow
from stillmotion.models import MethodParams, load_stable_diffusion
from stillmotion.models.candidates import best, guidance_factor, render_candidates, text_margin, variants
from stillmotion.models.images import pil_to_tensor
from stillmotion.models.inversion import encode_latents
from stillmotion.models.method import render_keyframes, synthetic_noise
from stillmotion.models.text import encode_text
from stillmotion.toyworld.world import Truth, render

TOY_MODEL = Path(__file__).resolve().parents[1] / "models" / "toyworld"
FAST = {"keyframes": 2, "steps": 3, "seed": 3}


def test_what_varies_candidate_zero_being_the_videos_own():
    params = MethodParams(candidates=5, xa_guidance=0.2, seed=7)
    assert [v["seed"] for v in variants(params, synthetic=True)] == [7, 8, 9, 10, 11]
    assert [guidance_factor(c) for c in range(5)] == [1, 2, 0.5, 4, 0.25]
    assert [v["xa_guidance"] for v in variants(params, synthetic=False)] == [0.2, 0.4, 0.1, 0.8, 0.05]
    with pytest.raises(ValueError, match="candidates must be in 1..16"):
        MethodParams(candidates=0)


def test_the_choice_is_the_best_structure_among_edits_gone_at_least_half_as_far_as_the_farthest():
    judged = [
        {"margin": -0.1, "structure": 0.9},  # the edit did not complete: best structure, not chosen
        {"margin": 0.004, "structure": 0.8},  # begun, but under half the farthest edit's margin
        {"margin": 0.02, "structure": 0.5},
        {"margin": 0.011, "structure": 0.7},  # over half of it: complete, and the best structure
    ]
    assert best(judged) == 3
    assert best([{"margin": -0.3, "structure": 0.9}, {"margin": -0.1, "structure": 0.2}]) == 1
    assert best([{"margin": 0.1, "structure": 0.5}] * 3) == 0  # ties: the video's own parameters


def test_one_candidate_is_exactly_the_video_without_best_of_n(sd):
    params = MethodParams(**FAST)
    for synthetic in (True, False):
        noise = synthetic_noise(sd, 3)
        plain = render_keyframes(sd, noise, "a red car", ["a blue car"], params, synthetic)
        rendered, records = render_candidates(
            sd, None if synthetic else noise, "a red car", ["a blue car"], params, synthetic
        )
        assert records == []
        assert torch.equal(rendered.keyframe_latents, plain.keyframe_latents)
        assert torch.equal(rendered.source_latent, plain.source_latent)


def test_real_mode_candidates_share_one_batch_and_equal_their_own_runs(sd):
    """Per-frame guidance steps in one batch: each candidate's key frames are those it gets alone."""
    params = MethodParams(**FAST, candidates=3, xa_guidance=50.0)
    noise = synthetic_noise(sd, 4)  # any x_T stands in for an inversion
    rendered, records = render_candidates(sd, noise, "a red car", ["a blue car", "a cat"], params, False)
    assert [r["varied"]["xa_guidance"] for r in records] == [50.0, 100.0, 25.0]
    assert sum(r["chosen"] for r in records) == 1
    chosen = next(r for r in records if r["chosen"])["varied"]["xa_guidance"]
    alone = render_keyframes(
        sd, noise, "a red car", ["a blue car", "a cat"], MethodParams(**FAST, xa_guidance=chosen), False
    )
    torch.testing.assert_close(rendered.keyframe_latents, alone.keyframe_latents, atol=1e-4, rtol=0)
    steps = [r["varied"]["xa_guidance"] for r in records]
    together = render_keyframes(
        sd, noise, "a red car", ["a blue car", "a cat"], params, False, guidance=steps
    )
    assert not torch.allclose(*together.keyframe_latents.chunk(3)[:2])  # the guidance step did vary


def test_the_margin_tells_which_colour_a_toy_frame_has():
    """The toy model as a zero-shot classifier: a red circle's latent is better explained by "a big red
    circle" than by "a big blue circle", and the other way round for a blue one."""
    toy = load_stable_diffusion(str(TOY_MODEL), device="cpu", dtype="fp32")
    red, blue = "a big red circle", "a big blue circle"
    embeds, _ = encode_text(toy.tokenizer, toy.text_encoder, [red, blue])
    latents = []
    for hue in (0.0, 230.0):
        image = PIL.Image.fromarray(render(Truth("circle", "red", hue, 10.0, (16.0, 16.0), True)))
        image = image.resize((toy.image_size, toy.image_size))
        latents.append(encode_latents(toy.vae, pil_to_tensor(image), "mean", torch.Generator()))
    latents = torch.cat(latents)
    margins = text_margin(toy, latents, embeds[[0, 1]], embeds[[1, 0]])  # red vs blue; blue vs red
    assert margins[0] > 0 and margins[1] > 0, margins


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_candidates_column_records_every_candidate_and_uses_the_chosen(
    prefect_server, tiny_model_dir, tmp_path
):
    image = tmp_path / "cat.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    table = pa.table(
        {
            "video_id": ["synthetic", "real"],
            "source_prompt": ["a red car", None],
            "image": [None, "cat.png"],
            "caption": [None, "a photo"],
            "prompts": [["a blue car"], ["a dog"]],
            "steps": [3, 3],
            "keyframes": [2, 2],
            "frames": [2, 2],
            "seed": [5, 5],
            "xa_guidance": [1.0, 1.0],
            "candidates": [3, 2],
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    summary = batch_flow(str(tmp_path / "m.parquet"), str(tmp_path / "out"), model=str(tiny_model_dir))
    assert (summary["done"], summary["failed"]) == (2, 0)
    synthetic = json.loads((tmp_path / "out" / "synthetic" / "metadata.json").read_text())
    assert [c["varied"] for c in synthetic["candidates"]] == [{"seed": 5}, {"seed": 6}, {"seed": 7}]
    chosen = [c for c in synthetic["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and synthetic["seed_used"] == chosen[0]["varied"]["seed"]
    assert all({"margin", "structure"} <= set(c) for c in synthetic["candidates"])
    real = json.loads((tmp_path / "out" / "real" / "metadata.json").read_text())
    assert [c["varied"] for c in real["candidates"]] == [{"xa_guidance": 1.0}, {"xa_guidance": 2.0}]
    assert (
        real["xa_guidance_used"]
        == next(c for c in real["candidates"] if c["chosen"])["varied"]["xa_guidance"]
    )
