"""The toy world, its judge, the metrics, the trainer, and quality floors of the committed model."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stillmotion.metrics import edge_ssim, temporal_smoothness
from stillmotion.models import MethodParams, ModelDefaults
from stillmotion.toyworld.judge import centroid, judge, mask_iou
from stillmotion.toyworld.quality import (
    Case,
    sampling_accuracy,
    score_cases,
    score_source,
    summarize,
    unseen_sources,
)
from stillmotion.toyworld.world import (
    COLOURS,
    NAMED_DEGREES,
    SHAPES,
    Truth,
    draw_batch,
    render,
    sample_truth,
    vocabulary,
)

TOY_MODEL = Path(__file__).resolve().parents[1] / "models" / "toyworld"


def test_judge_agrees_with_ground_truth():
    images, truths = draw_batch(300, np.random.default_rng(7))
    verdicts = [judge(image) for image in images]
    assert np.mean([v.colour == t.colour for v, t in zip(verdicts, truths, strict=True)]) >= 0.99
    assert np.mean([v.shape == t.shape for v, t in zip(verdicts, truths, strict=True)]) >= 0.98
    for verdict, truth in zip(verdicts[:20], truths[:20], strict=True):
        assert np.linalg.norm(centroid(verdict.mask) - np.array(truth.center)) < 1.5
    assert judge(np.zeros((32, 32, 3), np.uint8)).colour is None


def test_world_words_are_single_tokens(tmp_path):
    from transformers import CLIPTokenizer

    from stillmotion.models.tiny import write_clip_tokenizer

    write_clip_tokenizer(tmp_path, tuple(vocabulary()))
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    for word in vocabulary():
        assert len(tokenizer(word).input_ids) == 3  # bos, the word, eos
    assert len(tokenizer("a zebra").input_ids) > 4  # other text still tokenizes, byte by byte


def test_structure_metrics_see_shape_not_colour():
    circle = Truth("circle", "red", 0.0, 10.0, (16.0, 16.0), True)
    recoloured = render(Truth("circle", "blue", 230.0, 10.0, (16.0, 16.0), True))
    reshaped = render(Truth("square", "red", 0.0, 10.0, (16.0, 16.0), True))
    source = render(circle)
    assert edge_ssim(source, source) == pytest.approx(1.0)
    assert edge_ssim(source, recoloured) > edge_ssim(source, reshaped)
    assert mask_iou(judge(source).mask, judge(recoloured).mask) == 1.0
    assert mask_iou(judge(source).mask, judge(reshaped).mask) < 0.9


def test_temporal_smoothness_finds_the_jump():
    ramp = np.linspace(0, 255, 9)[:, None, None] * np.ones((9, 4, 4))
    smooth = temporal_smoothness(ramp)
    assert smooth["mean_step"] == pytest.approx(255 / 8) and smooth["worst_over_mean"] == pytest.approx(1.0)
    jump = np.concatenate([np.zeros((5, 4, 4)), np.full((4, 4, 4), 255.0)])
    assert temporal_smoothness(jump)["worst_over_mean"] == pytest.approx(8.0)


def test_training_script_writes_a_loadable_sd_layout_model(tmp_path):
    from stillmotion.models import load_stable_diffusion
    from stillmotion.toyworld.train import train_toy_model

    train_toy_model(tmp_path / "toy", vae_steps=2, unet_steps=2, images=256, log=lambda _: None)
    sd = load_stable_diffusion(str(tmp_path / "toy"), device="cpu", dtype="fp32")
    assert sd.image_size == 32 and sd.vae_scale_factor == 4
    assert len(sd.tokenizer("a big red circle").input_ids) == 6
    assert (tmp_path / "toy" / "training.json").exists()
    # trained on from that model (--unet-from): its weights are the start (not seed 1's new ones), so a
    # step too small to move them gives them back; the recipe says where they came from
    toy = tmp_path / "toy"
    train_toy_model(
        tmp_path / "on",
        unet_steps=1,
        seed=1,
        images=64,
        log=lambda _: None,
        vae_from=toy,
        unet_from=toy,
        lr=1e-12,
    )
    on = load_stable_diffusion(str(tmp_path / "on"), device="cpu", dtype="fp32")
    for name in ("unet", "text_encoder"):
        pairs = zip(getattr(sd, name).parameters(), getattr(on, name).parameters(), strict=True)
        assert all(torch.allclose(a, b, atol=1e-3) for a, b in pairs), name
    assert json.loads((tmp_path / "on" / "training.json").read_text())["unet_from"] == str(toy)
    # and the latents keep the scale that UNet learned on, not one from this run's (other) images
    assert on.vae.config.scaling_factor == sd.vae.config.scaling_factor
    with pytest.raises(ValueError, match="needs --vae-from"):  # a new VAE: not its latents
        train_toy_model(tmp_path / "bad", unet_from=toy, log=lambda _: None)
    with pytest.raises(ValueError, match="shape_weight must be"):  # refused before anything is drawn
        train_toy_model(tmp_path / "bad", shape_weight=-1, log=lambda _: None)
    assert not (tmp_path / "bad").exists()


def test_shape_weights_weigh_the_latent_pixels_a_shape_touches():
    from stillmotion.toyworld.train import shape_weights

    images = draw_batch(2, np.random.default_rng(3))[0]
    images = np.concatenate([images, np.zeros_like(images[:1])])  # and an image with no shape at all
    weights = shape_weights(images, 8, 4.0)
    assert weights.shape == (3, 1, 8, 8) and set(weights.unique().tolist()) == {1.0, 5.0}
    for image, weight in zip(images[:2], weights[:2], strict=True):  # a block with any of the shape: 1 + 4
        blocks = image.max(axis=-1).reshape(8, 4, 8, 4).max(axis=(1, 3)) > 0
        assert blocks.any() and np.array_equal(weight[0].numpy() == 5.0, blocks)
    assert bool((weights[2] == 1).all())


def test_every_colour_and_shape_is_drawn():
    _, truths = draw_batch(200, np.random.default_rng(1))
    assert {t.colour for t in truths} == set(COLOURS) and {t.shape for t in truths} == set(SHAPES)


def test_the_full_hue_world_covers_the_circle_and_names_each_hue_by_its_nearest_colour():
    images, truths = draw_batch(800, np.random.default_rng(3), hues="full")
    hues = np.array([t.hue for t in truths])
    assert np.all((0 <= hues) & (hues < 360))
    assert set(np.histogram(hues, bins=12, range=(0, 360))[0] > 0) == {True}  # every 30 degrees is drawn
    counts = {c: sum(t.colour == c for t in truths) for c in COLOURS}
    assert min(counts.values()) > 0.8 * 800 / len(COLOURS), counts  # each colour about as often
    # the caption's colour is the one the judge reads from the pixels: the nearest named hue
    verdicts = [judge(image) for image in images]
    assert np.mean([v.colour == t.colour for v, t in zip(verdicts, truths, strict=True)]) >= 0.97
    between = [t for t in truths if 130 < t.hue < 170]  # between green (120) and blue (230), nearer green
    assert between and {t.colour for t in between} == {"green"}
    # the "near" world is drawn as before (models/toyworld before 2026-12-04): within 12 degrees of its colour
    near = draw_batch(200, np.random.default_rng(3))[1]
    assert all(abs((t.hue - COLOURS[t.colour] + 180) % 360 - 180) <= 12 for t in near)
    # "mixed": every 30 degrees drawn too, but half of the images within 12 degrees of their colour's hue
    mixed = np.array([t.hue for t in draw_batch(800, np.random.default_rng(3), hues="mixed")[1]])
    assert set(np.histogram(mixed, bins=12, range=(0, 360))[0] > 0) == {True}
    named = np.array([min(abs((h - c + 180) % 360 - 180) for c in COLOURS.values()) for h in mixed])
    assert 0.5 < np.mean(named <= 12) < 0.75  # half near, plus the full half's share of those arcs (~0.2)


def test_the_named_hue_world_names_a_colour_only_near_its_own_hue():
    images, truths = draw_batch(800, np.random.default_rng(3), hues="named")
    hues = np.array([t.hue for t in truths])
    assert np.all((0 <= hues) & (hues < 360))
    assert set(np.histogram(hues, bins=12, range=(0, 360))[0] > 0) == {True}  # every 30 degrees is drawn
    apart = np.array([abs((t.hue - COLOURS[t.colour] + 180) % 360 - 180) for t in truths])
    named = np.array([t.named for t in truths])
    assert np.all(apart[named] <= NAMED_DEGREES) and np.all(apart[~named] > NAMED_DEGREES)
    assert 0.6 < named.mean() < 0.85  # half drawn near, plus the uniform half's share of those arcs
    for truth in truths:  # "a big blue circle" near blue; "a big circle" between two colours
        words = truth.caption.split()
        assert (truth.colour in words) == truth.named and words[-1] == truth.shape, truth
    # the truth's colour is still the nearest named one, as the judge reads it from the pixels
    verdicts = [judge(image) for image in images]
    assert np.mean([v.colour == t.colour for v, t in zip(verdicts, truths, strict=True)]) >= 0.97
    # a colour asked for is drawn, and named, near its own hue
    asked = [sample_truth(np.random.default_rng(i), colour="blue", hues="named") for i in range(20)]
    assert all(t.colour == "blue" and t.named and abs(t.hue - 230) <= NAMED_DEGREES for t in asked)


def test_unsized_captions_leave_the_size_word_out_of_that_share_and_nothing_else():
    images, truths = draw_batch(800, np.random.default_rng(5), hues="named", unsized=0.25)
    sized = np.array([t.sized for t in truths])
    assert 0.2 < 1 - sized.mean() < 0.3
    for truth in truths:  # "a red square" and "a square" of either size; the size word otherwise
        words = truth.caption.split()
        assert ("big" in words or "small" in words) == truth.sized and words[-1] == truth.shape, truth
    assert {t.big for t in truths if not t.sized} == {True, False}
    # the picture is the truth's, whatever its caption says of it
    assert all(np.array_equal(image, render(t)) for image, t in zip(images[:50], truths[:50], strict=True))
    assert all(t.sized for t in draw_batch(200, np.random.default_rng(5), "named")[1])  # the default: 0


def test_the_small_share_draws_that_share_of_small_shapes():
    truths = draw_batch(800, np.random.default_rng(5), hues="named", small=0.75)[1]
    assert 0.7 < 1 - np.mean([t.big for t in truths]) < 0.8
    assert all((5 <= t.radius <= 7.5) != t.big for t in truths)  # each size class keeps its own radii
    assert {t.caption.split()[1] for t in truths if t.sized and not t.big} == {"small"}
    fewer = draw_batch(800, np.random.default_rng(5), hues="named", small=0.25)[1]
    assert 0.2 < 1 - np.mean([t.big for t in fewer]) < 0.3


# Quality floors of the committed toy-world model (models/toyworld; the full sweep is in
# benchmarks/RESULTS.md). The edits here are the first 4 unseen sources of that sweep (12 of its 60
# edits) with the model's own defaults, as `benchmarks/quality.py --unseen` runs them; each floor sits
# below what they measured (in the comments) with room for an edit or two flipping on another CPU, and
# well above what a broken method gives: a change that breaks the method's quality fails here even when
# every shape and type still checks out.


@pytest.fixture(scope="module")
def toy_sd():
    from stillmotion.models import load_stable_diffusion

    torch.manual_seed(0)
    return load_stable_diffusion(str(TOY_MODEL), device="cpu", dtype="fp32")


def test_trained_model_draws_what_its_prompt_says(toy_sd):
    accuracy = sampling_accuracy(toy_sd, per_prompt=2, seed=1)
    assert accuracy["samples"] == 2 * len(COLOURS) * len(SHAPES)
    assert accuracy["colour"] >= 0.9 and accuracy["shape"] >= 0.9, accuracy  # measured 1.0 and 1.0
    # small shapes at synthetic mode's CFG, how a text-prompt row draws its source, are the model's weak
    # spot (squares drawn round): measured colour 0.92 and shape 0.67 (RESULTS 2026-12-08; a retrain with
    # --shape-weight 4 drew 1.0 and 0.92), a floor that catches them getting worse
    small = sampling_accuracy(toy_sd, per_prompt=2, seed=1, size="small", cfg=7.5)
    assert small["colour"] >= 0.85 and small["shape"] >= 0.5, small


GUIDED = 8.5  # the model's guidance step before feature injection (pix2pix-zero's mechanism alone)


@pytest.fixture(scope="module")
def edit_rows(toy_sd):
    """Edits of 4 unseen sources towards every other colour: with the model's own defaults ("default":
    feature injection, no cross-attention guidance), and with neither ("plain") or guidance only
    ("guided"), so that each part of the method shows what it is for."""
    params, _ = MethodParams(keyframes=4, frames=8).resolve(
        ModelDefaults.of_folder(toy_sd.path), synthetic=False
    )
    assert params.injection_share > 0 and params.xa_guidance == 0  # what the floors below were set for
    assert params.inbetween_mode == "latent"  # in-between key frames on the latent line (issue 30)
    sources = unseen_sources(4)
    scores = [s for source in sources for s in score_source(toy_sd, source, [0.0], params)]
    json.dumps([dataclasses.asdict(score) for score in scores])  # what benchmarks/quality.py --save writes
    alone = dataclasses.replace(params, inject_features=0.0)
    others = [s for source in sources for s in score_source(toy_sd, source, [0.0, GUIDED], alone)]
    rows = {row["xa_guidance"]: row for row in summarize(others)}
    return {"default": summarize(scores)[0], "plain": rows[0.0], "guided": rows[GUIDED]}


def test_edits_with_the_model_defaults_follow_the_prompt_and_keep_the_structure(edit_rows):
    default = edit_rows["default"]
    assert default["edits"] == 12
    # measured on the model trained with unsized captions, with plain DDIM inversion, layout injection for
    # 0.7 of the steps and the neutral negative for the last 30% (issue 30, eighth session); in brackets
    # the `--hues named` model with pix2pix-zero's regularized inversion (sixth session), the one before
    assert default["colour_fidelity"] >= 0.83, default  # measured 0.917 (0.917)
    assert default["shape_kept"] >= 0.8, default  # 1.0 (1.0)
    assert default["mask_iou"] >= 0.82, default  # 0.849 (0.879)
    assert default["last_iou"] >= 0.76, default  # 0.828 (0.832): the last key frame keeps the shape
    assert default["hollow_last"] <= 0.1, default  # 0.0 (0.0)
    assert default["detours"] <= 0.1, default  # 0.0: no third colour on the way (plain: 0.167)
    assert default["edge_ssim"] >= 0.56, default  # 0.613 (0.579)


def test_feature_injection_improves_structure_without_losing_fidelity(edit_rows):
    plain, default = edit_rows["plain"], edit_rows["default"]
    # on these 12 edits (the model's defaults; in brackets the model before, with the regularized
    # inversion): last IoU 0.744 -> 0.828 (0.553 -> 0.832), edge SSIM 0.551 -> 0.613, detours 0.167 -> 0,
    # fidelity 0.833 -> 0.917 (the same). The mean mask IoU over the frames no longer rises (0.865 ->
    # 0.849; 0.746 -> 0.879 before): plain inversion's source frame already holds the shape through the
    # early frames, and injection keeps it to the last key frame
    assert default["last_iou"] >= plain["last_iou"] + 0.07, (plain, default)
    assert default["edge_ssim"] >= plain["edge_ssim"] + 0.03, (plain, default)
    assert default["detours"] < plain["detours"], (plain, default)
    assert default["colour_fidelity"] >= plain["colour_fidelity"], (plain, default)


def test_cross_attention_guidance_improves_edges_and_colour_path_without_losing_fidelity(edit_rows):
    plain, guided = edit_rows["plain"], edit_rows["guided"]
    # without injection (the toy model's method before it), the model's other defaults: edge SSIM 0.551 ->
    # 0.600, detours 0.167 -> 0, fidelity 0.833 -> 1.0, last IoU 0.744 -> 0.740. With the regularized
    # inversion of the model before, guidance also held the mask (0.746 -> 0.789, last 0.553 -> 0.689);
    # with plain inversion the source frame holds it already, and guidance 8.5 costs some (0.865 -> 0.801)
    assert guided["edge_ssim"] >= plain["edge_ssim"] + 0.03, (plain, guided)
    assert guided["detours"] < plain["detours"], (plain, guided)
    assert guided["colour_fidelity"] >= plain["colour_fidelity"], (plain, guided)


def test_frames_move_smoothly(edit_rows):
    for row in edit_rows.values():  # adaptive insertion (the default): worst step / mean 1.02-1.03
        assert row["insertion"] == "adaptive" and row["mean_step"] > 0, row
        assert row["worst_over_mean"] <= 2.0, row  # the spline at even times: 2.4-2.8


def test_the_issues_schedule_lands_each_segment_on_its_colour(toy_sd):
    """Issue 30's first report, as `stillmotion generate --model models/toyworld --source-prompt "a red
    square" --prompt "a green square" --prompt "a blue square" --seed 0` makes it: on the `--hues full`
    model it reached green and ended violet (285, 55 degrees from blue); its colour words meant whole cells
    of the hue circle. The `--hues named` models' mean their own hue: 122 | 237 measured
    (CFG 7.5 and layout injection for 0.55 of the steps, the model's synthetic-mode defaults)."""
    case = Case("synthetic", "a red square", "red", "square", ("green", "blue"), seed=0)
    params = {"synthetic": MethodParams().resolve(ModelDefaults.of_folder(toy_sd.path), synthetic=True)[0]}
    (score,) = score_cases(toy_sd, [case], params)
    assert [s["target"] for s in score.segments] == ["green", "blue"]
    for segment in score.segments:  # each segment's last key frame within 30 degrees of its colour's hue
        assert segment["lands"], score.segments
    assert score.mean_iou >= 0.8 and not score.hollow, score  # measured 0.97


def test_the_readmes_real_mode_example_ends_on_its_colour(tmp_path):
    """The README's real-mode toy example, as a user runs it: a red circle on a 300 x 200 black image,
    "a big red circle" -> "a big blue circle", the model's defaults. Issue 30 reported this edit ending
    cyan (192); measured now 340 308 284 263 246 240, last IoU 0.83."""
    import PIL.Image
    import PIL.ImageDraw

    from stillmotion.cli import main
    from stillmotion.toyworld.world import hue_apart

    image = PIL.Image.new("RGB", (300, 200))
    PIL.ImageDraw.Draw(image).ellipse((90, 40, 210, 160), fill=(255, 0, 0))
    image.save(tmp_path / "red-circle.png")
    out = tmp_path / "toy-real"
    args = ["generate", "--model", str(TOY_MODEL), "--image", str(tmp_path / "red-circle.png")]
    assert (
        main([*args, "--caption", "a big red circle", "--prompt", "a big blue circle", "--out", str(out)])
        == 0
    )
    source = judge(np.asarray(PIL.Image.open(out / "source.png").convert("RGB")))
    keys = [
        judge(np.asarray(PIL.Image.open(p).convert("RGB"))) for p in sorted((out / "keyframes").glob("*.png"))
    ]
    assert hue_apart(source.hue, COLOURS["red"]) <= 10  # the video starts on the user's red
    assert hue_apart(keys[-1].hue, COLOURS["blue"]) <= 30, [k.hue for k in keys]  # and ends blue
    assert keys[-1].shape == "circle" and mask_iou(keys[-1].mask, source.mask) >= 0.8


def test_unseen_sources_are_judged_right_and_vary_what_training_fixed():
    sources = unseen_sources(24)
    verdicts = [judge(s.image) for s in sources]
    assert all(v.colour == s.truth.colour for v, s in zip(verdicts, sources, strict=True))
    assert np.mean([v.shape == s.truth.shape for v, s in zip(verdicts, sources, strict=True)]) >= 0.9
    radii = [s.truth.radius for s in sources]
    assert min(radii) < 5 or max(radii) > 12 or any(7.5 < r < 9 for r in radii)  # outside training's
    assert {s.sized for s in sources} == {True, False}
    assert any(s.caption.count(" ") == 2 for s in sources)  # "a red circle": no size word


def test_a_detour_is_a_hue_off_the_short_arc_between_source_and_target():
    from stillmotion.toyworld.quality import off_path

    red, yellow, green, blue = (COLOURS[c] for c in ("red", "yellow", "green", "blue"))
    assert not off_path(300, red, blue) and off_path(green, red, blue)  # red -> blue: magenta, not green
    assert not off_path(yellow, red, green)  # yellow lies between red and green
    assert off_path(red, green, yellow) and not off_path(90, green, yellow)
    assert not off_path(red + 20, red, blue)  # within the tolerance of an endpoint
    # yellow (60) and blue (230) are nearly opposite: by green or by red, each way is the path
    assert not off_path(green, yellow, blue) and not off_path(red, yellow, blue)
    assert not off_path(red, 55, 240) and not off_path(green, 240, 55)
    assert off_path(green, red - 30, blue)  # 230 and 260 degrees apart: only the short way, by magenta


def test_a_detour_passes_a_third_colour_and_an_overshoot_need_not():
    from stillmotion.toyworld.quality import detours, off_path

    red, yellow, green, blue = (COLOURS[c] for c in ("red", "yellow", "green", "blue"))
    assert detours(green, red, blue) and detours(yellow - 5, blue - 10, green)  # green; yellow (past green)
    # green -> blue running on to violet: off the arc, but nearer blue than red: an overshoot only
    assert off_path(295, green, blue) and not detours(295, green, blue)
    assert off_path(red + 20, yellow, green) and detours(red + 20, yellow, green)  # on to orange-red
    assert not detours(yellow, red, green) and not detours(None, red, green)  # on the arc; no foreground
    assert not detours(blue + 10, 211, yellow)  # back past a blue source, still blue: not a third colour


def test_a_segment_lands_near_its_colours_own_hue_and_stays_on_the_arc_from_the_last_segments_end():
    from stillmotion.toyworld.quality import ARC_DEGREES, LANDING_DEGREES, segment_verdicts

    red, green, blue = COLOURS["red"], COLOURS["green"], COLOURS["blue"]
    assert (LANDING_DEGREES, ARC_DEGREES) == (30.0, 20.0)

    def judged(keys, inserted, start, colours, shapes=None):
        shapes = shapes or ["circle"] * len(keys)
        return segment_verdicts(keys, shapes, [start, *inserted], start, colours, 2, 2, "circle")

    one = judged([300, blue + 5], [300, blue + 5], red, ["blue"])[0]  # red -> blue by magenta
    assert one["lands"] and not one["detour"] and one["error"] == 5
    cyan = judged([300, 193], [300, 193], red, ["blue"])[0]  # the judge's "blue" cell, but cyan
    assert not cyan["lands"] and cyan["error"] == 37
    assert not judged([300, blue], [300, blue], red, ["blue"], ["circle", "square"])[0]["lands"]  # shape
    # green -> blue running on to violet: off the arc from green to blue, though it ends near enough
    past = judged([285, blue + 25], [200, 285, blue + 25][-2:], green, ["blue"])[0]
    assert past["lands"] and past["detour"] and past["worst_off"] == 55
    # a schedule: segment 2 starts at segment 1's measured end (115, not green's 120) and turns back to red
    two = judged([60, 115, 348, blue], [60, 115, 348, blue], red, ["green", "blue"])
    assert two[0]["lands"] and not two[0]["detour"] and two[1]["start"] == 115
    assert two[1]["lands"] and two[1]["detour"]  # lands, but by way of red: a detour


def test_each_miss_has_one_cause_the_source_first_then_the_colour_then_the_shape():
    from stillmotion.toyworld.quality import CaseScore, miss_causes, summarize_cases

    def case(errors, shapes_ok=None, source_ok=True):
        shapes_ok = shapes_ok or [True] * len(errors)
        segments = [
            {"error": e, "shape_ok": ok, "lands": e is not None and e <= 30 and ok}
            for e, ok in zip(errors, shapes_ok, strict=True)
        ]
        landed = all(seg["lands"] for seg in segments)
        return CaseScore(
            "real", "schedule", "a red circle", [], 0, segments, landed, 0.9, 0.9, False, False, source_ok
        )

    group = [
        case([5, 10]),  # landed
        case([5, 10], source_ok=False),  # landed although the source is off: not a miss
        case([40, 10], source_ok=False),  # the source first
        case([5, 45]),  # a colour missed
        case([5, None], [True, False]),  # no colour at all, shape lost too: the colour
        case([5, 10], [True, False]),  # every colour reached, a shape lost
        case([5, 10], [True, True]),  # landed
        case([12]),  # landed
    ]
    causes = miss_causes(group)
    assert causes == {"missed_source": 1 / 8, "missed_colour": 2 / 8, "missed_shape": 1 / 8}
    (row,) = summarize_cases(group)
    assert row["cases_landed"] + sum(causes.values()) == pytest.approx(1.0)


def test_issue_30_cases_are_fixed_and_separate_the_held_out_set_from_the_sweep_set():
    from stillmotion.toyworld.quality import HELD_OUT_SEED, SWEEP_SEED, issue30_cases

    assert HELD_OUT_SEED != SWEEP_SEED
    for mode in ("real", "synthetic"):
        single = issue30_cases(mode, "single", 60, HELD_OUT_SEED)
        schedules = issue30_cases(mode, "schedule", 60, HELD_OUT_SEED)
        assert len(single) == len(schedules) == 60
        assert {len(c.colours) for c in single} == {1} and {len(c.colours) for c in schedules} == {2, 3}
        for case in single + schedules:
            colours = [case.colour, *case.colours]
            assert all(a != b for a, b in zip(colours, colours[1:], strict=False))  # every segment edits
            assert all(
                p.replace(c, case.colour) == case.caption
                for p, c in zip(case.prompts, case.colours, strict=True)
            )
        again = issue30_cases(mode, "schedule", 60, HELD_OUT_SEED)  # drawn from the seed, not at random
        assert [(c.caption, c.colours, c.seed) for c in again] == [
            (c.caption, c.colours, c.seed) for c in schedules
        ]
        sweep = issue30_cases(mode, "schedule", 60, SWEEP_SEED)
        assert [c.caption for c in sweep] != [c.caption for c in schedules]
