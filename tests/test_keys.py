"""One resolved config, and every stage key derived from exactly the fields that stage reads.

Every field of MethodParams is changed one at a time: the stages that read it (declared here, apart from
models/params.STAGE_FIELDS, so a field dropped from a stage's key fails) and the stages downstream of
them get new keys, and no other; the row fingerprint changes with every field but the execution options.
"""

import dataclasses

import pytest

from stillmotion.fingerprints import row_fingerprint
from stillmotion.models.params import EXECUTION_FIELDS, STAGE_FIELDS, MethodParams, ModelDefaults
from stillmotion.requests import VideoRequest, resolved
from stillmotion.tasks.runtime import Job
from stillmotion.tasks.stages import encode_key, frames_key, invert_key, keyframes_key, scores_key

# field -> (another value, the stages that read it)
CHANGES = {
    "keyframes": (3, {"keyframes", "frames"}),
    "frames": (13, {"frames", "scores"}),
    "fps": (9, {"encode"}),
    "seed": (7, {"invert", "keyframes"}),
    "steps": (11, {"invert", "keyframes"}),
    "cfg_scale": (6.5, {"keyframes"}),
    "xa_guidance": (0.3, {"keyframes"}),
    "curve": ("linear", {"keyframes"}),
    "insertion": ("spline", {"frames"}),
    "candidates": (2, {"keyframes"}),
    "reg_steps": (4, {"invert"}),
    "auto_corr_rolls": (4, {"invert"}),
    "lambda_auto_corr": (10.0, {"invert"}),
    "lambda_kl": (10.0, {"invert"}),
    "encode": ("sample", {"invert"}),
    "cross_frame": ("extend", {"keyframes"}),
    "direction": ("sentences", {"keyframes"}),
    "direction_templates": (("a {}",), {"keyframes"}),
    "xa_until": (0.5, {"keyframes"}),
    "xa_schedule": ("linear", {"keyframes"}),
    "inbetween": ("latent", {"keyframes"}),
    "negative": ("empty", {"keyframes"}),
    "negative_until": (0.5, {"keyframes"}),
    "negative_from": (0.25, {"keyframes"}),
    "edit_from": (0.2, {"keyframes"}),
    "inject_features": (0.3, {"keyframes"}),
    "inject_layers": (("down_blocks.0.resnets.0",), {"keyframes"}),
    "inject_mode": ("layout", {"keyframes"}),
    "batch_size": (2, set()),  # memory only
}
DOWNSTREAM = {
    "invert": {"keyframes"},
    "keyframes": {"frames"},
    "frames": {"encode", "scores"},
    "encode": set(),
    "scores": set(),
}
MODEL = {"model": None, "revision": "local-0123456789abcdef", "size": 64}
SOURCE = {"size": 100, "mtime": 1.5}


def closure(stages: set) -> set:
    out, todo = set(), list(stages)
    while todo:
        stage = todo.pop()
        if stage not in out:
            out.add(stage)
            todo += DOWNSTREAM[stage]
    return out


def request_with(**changes) -> VideoRequest:
    request = VideoRequest("v", ("a dog",), MethodParams(**changes), image="in.png", caption="a cat")
    return resolved(request, ModelDefaults())[0]


def stage_keys(request: VideoRequest) -> dict[str, str]:
    job = Job("v", request, "out", "cache", "tiny", "/m", MODEL["revision"], 64, "cpu", "fp32")
    source, caption = {"key": "source/abc", "image_sha256": "abc"}, {"caption": "a cat"}
    keys = {"invert": invert_key(job, source, caption)}
    keys["keyframes"] = keyframes_key(job, {"key": keys["invert"]}, caption)
    keys["frames"] = frames_key(job, {"key": keys["keyframes"]})
    keys["encode"] = encode_key(job, {"key": keys["frames"]})
    keys["scores"] = scores_key(job, {"key": keys["frames"]}, source)
    return keys


def test_every_field_is_declared_here_and_read_by_a_stage_or_an_execution_option():
    fields = {f.name for f in dataclasses.fields(MethodParams)}
    assert set(CHANGES) == fields  # a new field must say which stages read it
    read = set().union(*STAGE_FIELDS.values())
    assert fields == read | set(EXECUTION_FIELDS) and not read & set(EXECUTION_FIELDS)


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_a_field_changes_exactly_the_keys_of_the_stages_that_read_it(field):
    value, readers = CHANGES[field]
    base, changed = request_with(), request_with(**{field: value})
    assert getattr(changed.params, field) != getattr(base.params, field)
    before, after = stage_keys(base), stage_keys(changed)
    assert {stage for stage in before if before[stage] != after[stage]} == closure(readers)
    fingerprints = {row_fingerprint(request, MODEL, SOURCE) for request in (base, changed)}
    assert len(fingerprints) == (1 if field in EXECUTION_FIELDS else 2)


def test_a_model_default_and_the_same_value_given_key_alike():
    defaults = ModelDefaults(steps=25, cfg_scale=3.0, from_model=frozenset({"steps", "cfg_scale"}))
    request = VideoRequest("v", ("a dog",), MethodParams(), image="in.png", caption="a cat")
    from_model = resolved(request, defaults)[0]
    given = resolved(dataclasses.replace(request, params=MethodParams(steps=25, cfg_scale=3.0)), defaults)[0]
    assert stage_keys(from_model) == stage_keys(given)
    assert row_fingerprint(from_model, MODEL, SOURCE) == row_fingerprint(given, MODEL, SOURCE)
    assert stage_keys(from_model) != stage_keys(request_with())  # and other than Stable Diffusion's


def test_unresolved_parameters_have_no_key():
    job = Job("v", VideoRequest("v", ("a",), MethodParams(), source_prompt="b"), "o", "c", "t", "/m", "r", 64)
    with pytest.raises(ValueError, match="resolve"):
        keyframes_key(job, None, {"caption": "b"})


def test_the_fingerprint_covers_prompts_caption_source_and_model():
    base = request_with()
    fingerprint = row_fingerprint(base, MODEL, SOURCE)
    assert row_fingerprint(dataclasses.replace(base, prompts=("a cow",)), MODEL, SOURCE) != fingerprint
    assert row_fingerprint(dataclasses.replace(base, caption="a bird"), MODEL, SOURCE) != fingerprint
    assert row_fingerprint(base, MODEL, {**SOURCE, "mtime": 2.5}) != fingerprint  # the image was replaced
    assert row_fingerprint(base, {**MODEL, "revision": "local-fedcba9876543210"}, SOURCE) != fingerprint
    # BLIP's identity counts only when BLIP makes the caption
    assert row_fingerprint(base, MODEL, SOURCE, captioner="local-1") == fingerprint
    blip = dataclasses.replace(base, caption=None)
    assert row_fingerprint(blip, MODEL, SOURCE, "local-1") != row_fingerprint(blip, MODEL, SOURCE, "local-2")
