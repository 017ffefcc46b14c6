"""The method's invariants on the tiny model: batching, guidance, seeds, schedules, the spline."""

import dataclasses
import math

import pytest
import torch
from diffusers import DDIMScheduler

from stillmotion.models import MethodParams, edit_weights, keyframe_embeddings, spline_frames
from stillmotion.models.attention import attention_store
from stillmotion.models.keyframes import (
    attention_loss,
    classifier_free_guidance,
    guided_keyframes,
    guided_step,
)
from stillmotion.models.method import keyframe_negative, neutral_caption, render_keyframes, synthetic_noise
from stillmotion.models.params import STAGE_FIELDS
from stillmotion.models.text import encode_text


def embed(sd, texts):
    return encode_text(sd.tokenizer, sd.text_encoder, texts)[0]


def test_edit_weight_curves():
    log = edit_weights(4, "log")
    assert log == pytest.approx([math.log(1 + k * (math.e - 1) / 4) for k in range(1, 5)])
    assert log[-1] == pytest.approx(1.0) and all(a < b for a, b in zip(log, log[1:], strict=False))
    assert edit_weights(4, "linear") == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError):
        edit_weights(4, "cubic")


def test_schedule_embeddings_run_from_prompt_to_prompt(sd):
    embeds = embed(sd, ["a cat", "a dog", "a bird"])
    caption, prompts = embeds[:1], embeds[1:]
    edited = keyframe_embeddings(caption, prompts, keyframes=3, curve="linear")  # (2 * 3, T, D)
    assert edited.shape == (6, *caption.shape[1:])
    torch.testing.assert_close(edited[2], prompts[0], atol=1e-6, rtol=0)  # end of segment 1: prompt 1
    torch.testing.assert_close(edited[5], prompts[1], atol=1e-6, rtol=0)  # end of segment 2: prompt 2
    # segment 2, key frame 1 (w = 1/3) lies a third of the way from prompt 1 to prompt 2
    torch.testing.assert_close(edited[3], prompts[0] + (prompts[1] - prompts[0]) / 3, atol=1e-5, rtol=0)


def test_batched_keyframes_equal_keyframes_one_at_a_time(sd):
    embeds = embed(sd, ["a cat", "a dog", "a bird"])
    caption, prompts = embeds[:1], embeds[1:]
    edited = keyframe_embeddings(caption, prompts, keyframes=2)  # 4 key frames over 2 segments
    x_t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    common = dict(steps=3, cfg_scale=5.0, xa_guidance=5.0)
    source, batched = guided_keyframes(sd.unet, sd.scheduler_config, x_t, caption, caption, edited, **common)
    for k in range(edited.shape[0]):
        alone_source, alone = guided_keyframes(
            sd.unet, sd.scheduler_config, x_t, caption, caption, edited[k : k + 1], **common
        )
        # batched BLAS rounds differently: observed 1.2e-5 on values of magnitude ~3
        torch.testing.assert_close(batched[k : k + 1], alone, atol=1e-4, rtol=0)
        torch.testing.assert_close(source, alone_source, atol=0, rtol=0)
    # chunking the batch (a memory knob) changes nothing either
    _, chunked = guided_keyframes(
        sd.unet, sd.scheduler_config, x_t, caption, caption, edited, batch_size=3, **common
    )
    torch.testing.assert_close(batched, chunked, atol=1e-4, rtol=0)
    assert (batched[0] - batched[3]).abs().max() > 1e-3  # different edits give different frames


def cfg_noise(sd, latent, t, negative, edited, scale=5.0):
    """One CFG noise prediction of `latent` towards `edited` against `negative`, as the key frames take it."""
    both = sd.unet(torch.cat([latent] * 2), t, encoder_hidden_states=torch.cat([negative, edited]))
    return classifier_free_guidance(both.sample, scale)


@torch.no_grad()
def denoise_by_hand(sd, x_t, steps, noise):
    """DDIM from x_t, step i's noise prediction `noise(i, latent, t)`: the reference loop, written out."""
    scheduler = DDIMScheduler.from_config(sd.scheduler_config)
    scheduler.set_timesteps(steps)
    latent = x_t.clone()
    for i, t in enumerate(scheduler.timesteps):
        latent = scheduler.step(noise(i, latent, t), t, latent).prev_sample
    return latent


def test_edit_from_branches_the_key_frames_from_the_reference_after_its_share_of_the_steps(sd):
    embeds = embed(sd, ["a cat", "a dog"])
    caption, edited = embeds[:1], embeds[1:]
    x_t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    common = dict(steps=4, cfg_scale=5.0, xa_guidance=0.0)
    source, late = guided_keyframes(
        sd.unet, sd.scheduler_config, x_t, caption, caption, edited, edit_from=0.5, **common
    )
    _, early = guided_keyframes(sd.unet, sd.scheduler_config, x_t, caption, caption, edited, **common)

    # by hand: two steps of the caption alone (the reference: its negative is the caption, so CFG is its
    # conditional prediction), then two CFG steps of the edit from where the reference got to
    def noise(i, latent, t):
        if i < 2:
            return sd.unet(latent, t, encoder_hidden_states=caption).sample
        return cfg_noise(sd, latent, t, caption, edited)

    torch.testing.assert_close(late, denoise_by_hand(sd, x_t, 4, noise), atol=1e-4, rtol=0)
    assert (late - early).abs().max() > 1e-3  # branching from x_T is another video
    assert (late - source).abs().max() > 1e-3  # and the edit still happens
    with pytest.raises(ValueError, match="edit_from"):
        MethodParams(edit_from=1.0)
    assert "edit_from" in STAGE_FIELDS["keyframes"]  # the key frames' key changes with it (test_keys.py)


def test_negative_from_gives_the_key_frames_the_empty_negative_only_from_its_share_of_the_steps(sd):
    embeds = embed(sd, ["a cat", "a dog", ""])
    caption, edited, empty = embeds[:1], embeds[1:2], embeds[2:]
    x_t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    common = dict(steps=4, cfg_scale=5.0, xa_guidance=0.0, keyframe_negative_embeds=empty)
    _, late = guided_keyframes(
        sd.unet, sd.scheduler_config, x_t, caption, caption, edited, negative_from=0.5, **common
    )
    _, throughout = guided_keyframes(sd.unet, sd.scheduler_config, x_t, caption, caption, edited, **common)

    # by hand: two CFG steps against the caption (pix2pix-zero's), then two against the empty prompt
    def noise(i, latent, t):
        return cfg_noise(sd, latent, t, caption if i < 2 else empty, edited)

    torch.testing.assert_close(late, denoise_by_hand(sd, x_t, 4, noise), atol=1e-4, rtol=0)
    assert (late - throughout).abs().max() > 1e-3  # the empty negative on every step is another video
    with pytest.raises(ValueError, match="negative_from"):
        MethodParams(negative_from=0.5, negative_until=0.5)
    assert "negative_from" in STAGE_FIELDS["keyframes"]  # keyed (test_keys.py)


def test_the_neutral_negative_is_the_caption_less_the_words_the_prompts_change(sd):
    schedule = ["a big blue circle", "a big green circle"]
    assert neutral_caption("a big red circle", schedule) == "a big circle"
    assert neutral_caption("a red circle", ["a blue square"]) == "a"  # one run of two words
    assert neutral_caption("a big red circle", ["a small blue circle"]) == "a circle"  # two runs
    assert neutral_caption("a circle", ["a red circle"]) == "a circle"  # an insertion changes no word
    assert neutral_caption("a cat", ["two dogs"]) == ""

    caption, prompts = "a red car", ["a blue car"]

    def negative(name, synthetic=False):
        return keyframe_negative(sd, MethodParams(negative=name), synthetic, caption, prompts)

    torch.testing.assert_close(negative("neutral"), embed(sd, ["a car"]), atol=0, rtol=0)
    torch.testing.assert_close(negative("empty"), embed(sd, [""]), atol=0, rtol=0)
    assert negative("caption") is None and negative("neutral", synthetic=True) is None

    # render_keyframes gives it to the key frames on the window: the loop by hand with E("a car") there
    params = MethodParams(
        keyframes=1, steps=4, cfg_scale=5.0, xa_guidance=0.0, negative="neutral", negative_from=0.5
    )
    x_t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    rendered = render_keyframes(sd, x_t, caption, prompts, params, synthetic=False)
    embeds = embed(sd, [caption, prompts[0], "a car"])

    def noise(i, latent, t):
        return cfg_noise(sd, latent, t, embeds[:1] if i < 2 else embeds[2:], embeds[1:2])

    by_hand = denoise_by_hand(sd, x_t, 4, noise)
    torch.testing.assert_close(rendered.keyframe_latents, by_hand, atol=1e-4, rtol=0)
    empty = render_keyframes(sd, x_t, caption, prompts, dataclasses.replace(params, negative="empty"), False)
    assert (empty.keyframe_latents - by_hand).abs().max() > 1e-3  # the empty prompt is another video
    with pytest.raises(ValueError, match="'neutral'"):
        MethodParams(negative="none")


def test_feature_injection_gives_the_key_frames_the_reference_features_for_its_share_of_the_steps(sd):
    embeds = embed(sd, ["a cat", "a dog", "a bird"])
    caption, edited = embeds[:1], embeds[1:]  # two key frames
    x_t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    common = dict(steps=4, cfg_scale=5.0, xa_guidance=0.0)
    layer = "up_blocks.1.resnets.1"
    seen = []  # what the block after the injected layer receives: the injected layer's output
    after = sd.unet.get_submodule("up_blocks.1.attentions.1")
    hook = after.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        _, injected = guided_keyframes(
            sd.unet, sd.scheduler_config, x_t, caption, caption, edited,
            inject_features=0.5, inject_layers=(layer,), **common,
        )  # fmt: skip
    finally:
        hook.remove()
    _, plain = guided_keyframes(sd.unet, sd.scheduler_config, x_t, caption, caption, edited, **common)
    assert len(seen) == 8  # per step: the reference pass ([uncond; cond]), then the key frames' pass
    for step in range(4):
        reference, frames = seen[2 * step], seen[2 * step + 1]  # (2, C, h, w), (4, C, h, w)
        assert reference.shape[0] == 2 and frames.shape[0] == 4
        # key frames are laid out [uncond_1, uncond_2, cond_1, cond_2]; each copy takes its own kind's
        gap = (frames - reference.repeat_interleave(2, dim=0)).abs().max()
        assert (gap == 0) if step < 2 else (gap > 1e-4), (step, gap)
    assert (injected - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="up_blocks.1.resnets.1"):  # a bad name lists the real ones
        guided_keyframes(
            sd.unet, sd.scheduler_config, x_t, caption, caption, edited,
            inject_features=0.5, inject_layers=("up_blocks.9.resnets.0",), **common,
        )  # fmt: skip
    with pytest.raises(ValueError, match="inject_features"):
        MethodParams(inject_features=1.5)
    assert {"inject_features", "inject_layers"} <= set(STAGE_FIELDS["keyframes"])  # keyed (test_keys.py)


def test_layout_injection_takes_the_reference_features_less_their_mean_and_keeps_the_frames_own_mean(sd):
    embeds = embed(sd, ["a cat", "a dog", "a bird"])
    caption, edited = embeds[:1], embeds[1:]  # two key frames
    x_t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    common = dict(steps=4, cfg_scale=5.0, xa_guidance=0.0, inject_features=0.5)
    layer = "up_blocks.1.resnets.1"
    own, seen = [], []  # the layer's own output (hooked before the injection), what the next block gets
    own_hook = sd.unet.get_submodule(layer).register_forward_hook(
        lambda module, args, output: own.append(output.detach().clone())
    )
    after = sd.unet.get_submodule("up_blocks.1.attentions.1")
    seen_hook = after.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        _, layout = guided_keyframes(
            sd.unet, sd.scheduler_config, x_t, caption, caption, edited,
            inject_layers=(layer,), inject_mode="layout", **common,
        )  # fmt: skip
    finally:
        own_hook.remove()
        seen_hook.remove()
    _, replaced = guided_keyframes(
        sd.unet, sd.scheduler_config, x_t, caption, caption, edited, inject_layers=(layer,), **common
    )

    def mean(features):  # per frame and channel, over the image
        return features.mean((-2, -1), keepdim=True)

    for step in range(2):  # the injected steps
        reference = seen[2 * step].repeat_interleave(2, dim=0)  # each key-frame copy's own kind
        frames, frames_own = seen[2 * step + 1], own[2 * step + 1]
        torch.testing.assert_close(frames - mean(frames), reference - mean(reference))  # the layout
        torch.testing.assert_close(mean(frames), mean(frames_own))  # the key frames' own level
        assert (mean(frames) - mean(reference)).abs().max() > 1e-4  # which is not the reference's
    assert (layout - replaced).abs().max() > 1e-3
    with pytest.raises(ValueError, match="inject_mode"):
        MethodParams(inject_mode="mean")
    assert "inject_mode" in STAGE_FIELDS["keyframes"]  # keyed (test_keys.py)


def map_distances(sd, x_t, caption, edited, steps, xa_guidance):
    """Per step, the attn2-map loss of the key frame's trajectory against the reference maps."""
    scheduler = DDIMScheduler.from_config(sd.scheduler_config)
    scheduler.set_timesteps(steps)
    reference_embeds = torch.cat([caption, caption])
    embeds = torch.cat([caption, edited])
    source, latents, distances = x_t.clone(), x_t.clone(), []
    with torch.no_grad(), attention_store(sd.unet) as store:
        for t in scheduler.timesteps:
            store.mode = "record"
            noise = sd.unet(torch.cat([source] * 2), t, encoder_hidden_states=reference_embeds).sample
            source = scheduler.step(classifier_free_guidance(noise, 5.0), t, source).prev_sample
            distances.append(float(attention_loss(sd.unet, store, torch.cat([latents] * 2), t, embeds)))
            latents = guided_step(sd.unet, scheduler, store, latents, t, caption, edited, 5.0, xa_guidance)
    return distances


def test_guidance_pulls_attention_maps_towards_the_reference(sd):
    """A random tiny model's maps are nearly uniform, so the gradient is tiny: weight 100 (not SD's 0.1)
    gives a small but systematic pull on every step (weight 1e4 overshoots). The useful weight is a
    property of the model; quality benchmarks sweep it on a trained one."""
    embeds = embed(sd, ["a photo of a cat", "a watercolor of a dog"])
    caption, edited = embeds[:1], keyframe_embeddings(embeds[:1], embeds[1:], keyframes=1)
    x_t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    unguided = map_distances(sd, x_t, caption, edited, steps=8, xa_guidance=0.0)
    guided = map_distances(sd, x_t, caption, edited, steps=8, xa_guidance=100.0)
    assert guided[0] == pytest.approx(unguided[0])  # same start: x_T
    assert all(g < u for g, u in zip(guided[1:], unguided[1:], strict=True))
    assert sum(guided[1:]) < 0.998 * sum(unguided[1:])


def test_synthetic_noise_is_seeded(sd):
    torch.testing.assert_close(synthetic_noise(sd, 7), synthetic_noise(sd, 7), atol=0, rtol=0)
    assert not torch.equal(synthetic_noise(sd, 7), synthetic_noise(sd, 8))


def test_render_keyframes_layout_and_truncation_note(sd):
    params = MethodParams(keyframes=2, steps=3, seed=1)
    long_prompt = "a very long prompt " * 30
    x_t = synthetic_noise(sd, 1)
    rendered = render_keyframes(
        sd, x_t, "a red car", ["一只蓝色的车 🚗", long_prompt], params, synthetic=True
    )
    assert rendered.source_latent.shape == (1, 4, 8, 8)
    assert rendered.keyframe_latents.shape == (4, 4, 8, 8)  # 2 segments x 2 key frames
    assert rendered.truncated_prompts == [long_prompt]


def test_spline_passes_through_keyframes_and_chains_segments():
    torch.manual_seed(0)
    source = torch.randn(1, 4, 8, 8)
    keyframes = torch.randn(6, 4, 8, 8)  # 2 segments x K=3
    frames = spline_frames(source, keyframes, keyframes=3, frames=6)  # frame j at t = j/2
    assert frames.shape == (12, 4, 8, 8)
    for segment in range(2):
        for k in range(3):  # key frame k+1 sits at t = k+1, i.e. frame j = 2(k+1)
            torch.testing.assert_close(
                frames[segment * 6 + 2 * k + 1], keyframes[segment * 3 + k], atol=1e-5, rtol=0
            )
    # between anchors the spline is not a copy of either neighbour
    assert (frames[0] - source[0]).abs().max() > 1e-3 and (frames[0] - keyframes[0]).abs().max() > 1e-3
    # N not a multiple of K still ends each segment on its last key frame
    uneven = spline_frames(source, keyframes, keyframes=3, frames=4)
    torch.testing.assert_close(uneven[3], keyframes[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(uneven[7], keyframes[5], atol=1e-5, rtol=0)


def test_spline_with_one_keyframe_is_linear():
    source, keyframe = torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8)
    frames = spline_frames(source, keyframe, keyframes=1, frames=4)
    assert [round(float(f.mean()), 4) for f in frames] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("options", [{"channels_last": True}])
def test_optimised_execution_matches_the_plain_path(tiny_model_dir, sd, options):
    """Execution options change memory layout and kernels, not results: agree within 1e-4."""
    from stillmotion.models import load_stable_diffusion

    fast = load_stable_diffusion(str(tiny_model_dir), device="cpu", dtype="fp32", **options)
    params = MethodParams(keyframes=2, steps=4, seed=3)
    x_t = synthetic_noise(sd, 3)
    plain = render_keyframes(sd, x_t, "a red car", ["a blue car"], params, synthetic=True)
    optimised = render_keyframes(fast, x_t, "a red car", ["a blue car"], params, synthetic=True)
    torch.testing.assert_close(optimised.keyframe_latents, plain.keyframe_latents, atol=1e-4, rtol=0)
    torch.testing.assert_close(optimised.source_latent, plain.source_latent, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_unet_matches_the_plain_path(tiny_model_dir, sd, backend):
    """torch.compile of the UNet, through our attention processors and the guidance backward, with
    AOT autograd (aot_eager: 150 s on 2 cores) and C++ kernels (inductor: over 15 minutes). Marked
    slow (`pytest -m slow`): the default suite's tests/test_compile.py checks graph capture, the
    graph count and the numbers with the eager backend."""
    from stillmotion.models import load_stable_diffusion

    fast = load_stable_diffusion(str(tiny_model_dir), device="cpu", dtype="fp32", compile_unet=backend)
    params = MethodParams(keyframes=2, steps=3, seed=3)
    x_t = synthetic_noise(sd, 3)
    plain = render_keyframes(sd, x_t, "a red car", ["a blue car"], params, synthetic=True)
    compiled = render_keyframes(fast, x_t, "a red car", ["a blue car"], params, synthetic=True)
    torch.testing.assert_close(compiled.keyframe_latents, plain.keyframe_latents, atol=1e-3, rtol=0)
