"""Method defaults that travel with the model: stillmotion.json beside model_index.json."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.testing.utilities import prefect_test_harness

from stillmotion.cli import main
from stillmotion.flows import batch_flow
from stillmotion.models import MethodParams, ModelDefaults
from stillmotion.models.params import (
    DEFAULT_CFG_SCALE,
    DEFAULT_XA_GUIDANCE_REAL,
    DEFAULT_XA_GUIDANCE_SYNTHETIC,
)
from stillmotion.tasks import COMPUTED

FAST = {"steps": 3, "keyframes": 2, "frames": 2}


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def own_defaults_model(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    defaults = {"method_defaults": {"xa_guidance_real": 4.0, "xa_guidance_synthetic": 7.5}}
    (folder / "stillmotion.json").write_text(json.dumps(defaults))
    return folder


def test_a_folder_without_the_file_keeps_pix2pix_zeros_defaults(tiny_model_dir, own_defaults_model):
    plain = ModelDefaults.of_folder(tiny_model_dir)
    assert (plain.xa_guidance_real, plain.xa_guidance_synthetic, plain.cfg_scale) == (
        DEFAULT_XA_GUIDANCE_REAL,
        DEFAULT_XA_GUIDANCE_SYNTHETIC,
        DEFAULT_CFG_SCALE,
    )
    own = ModelDefaults.of_folder(own_defaults_model)
    assert (own.xa_guidance_real, own.xa_guidance_synthetic, own.cfg_scale) == (4.0, 7.5, DEFAULT_CFG_SCALE)

    params, sources = MethodParams().resolve(own, synthetic=True)
    assert (params.xa_guidance, params.cfg_scale) == (7.5, DEFAULT_CFG_SCALE)
    assert sources == {"xa_guidance": "model", "cfg_scale": "default", "cross_frame": "default"}
    params, sources = MethodParams(xa_guidance=0.5, cfg_scale=2.0).resolve(own, synthetic=False)
    assert (params.xa_guidance, params.cfg_scale) == (0.5, 2.0)  # a given value wins
    assert sources == {"xa_guidance": "given", "cfg_scale": "given", "cross_frame": "default"}


def test_a_model_may_give_synthetic_mode_its_own_cfg_scale(own_defaults_model):
    defaults = json.loads((own_defaults_model / "stillmotion.json").read_text())
    defaults["method_defaults"].update(cfg_scale=4.0, cfg_scale_synthetic=7.5)
    (own_defaults_model / "stillmotion.json").write_text(json.dumps(defaults))
    own = ModelDefaults.of_folder(own_defaults_model)
    real, real_from = MethodParams().resolve(own, synthetic=False)
    synthetic, synthetic_from = MethodParams().resolve(own, synthetic=True)
    assert (real.cfg_scale, synthetic.cfg_scale) == (4.0, 7.5)
    assert real_from["cfg_scale"] == synthetic_from["cfg_scale"] == "model"
    assert MethodParams(cfg_scale=2.0).resolve(own, synthetic=True)[0].cfg_scale == 2.0  # given wins
    # the keys follow the value: synthetic key frames at 7.5 key apart from real ones at 4
    assert real.stage_fields("keyframes")["cfg_scale"] != synthetic.stage_fields("keyframes")["cfg_scale"]
    # without it, both modes take cfg_scale; Stable Diffusion keeps pix2pix-zero's for both
    del defaults["method_defaults"]["cfg_scale_synthetic"]
    (own_defaults_model / "stillmotion.json").write_text(json.dumps(defaults))
    assert (
        MethodParams().resolve(ModelDefaults.of_folder(own_defaults_model), synthetic=True)[0].cfg_scale
        == 4.0
    )
    assert MethodParams().resolve(ModelDefaults(), synthetic=True)[0].cfg_scale == DEFAULT_CFG_SCALE


@pytest.mark.parametrize(
    "content, error",
    [
        ({"method_defaults": {"xa_guidance": 3}}, "unknown method defaults"),
        ({"method_defaults": {"cfg_scale": 0.5}}, "cfg_scale must be"),
        ({"method_defaults": {"cfg_scale_synthetic": 0.5}}, "cfg_scale must be"),
        ({"method_defaults": {"xa_guidance_real": "lots"}}, "could not convert"),
        ({"defaults": {}}, "not a stillmotion model defaults file"),
    ],
)
def test_a_bad_defaults_file_is_refused_by_name(own_defaults_model, content, error, tmp_path, capsys):
    (own_defaults_model / "stillmotion.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=error):
        ModelDefaults.of_folder(own_defaults_model)
    rows = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"video_id": ["v"], "source_prompt": ["a red car"], "prompts": [["a blue car"]]}), rows
    )
    capsys.readouterr()
    assert (
        main(["run", str(rows), "--output", str(tmp_path / "out"), "--model", str(own_defaults_model)]) == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stillmotion.json" in err[0]


def test_runs_use_the_models_defaults_key_the_effective_values_and_say_where_they_came_from(
    own_defaults_model, tmp_path
):
    table = pa.table(
        {
            "video_id": ["implicit", "explicit"],
            "source_prompt": ["a red car"] * 2,
            "prompts": [["a blue car"]] * 2,
            "xa_guidance": pa.array([None, 7.5], pa.float64()),
            "seed": [5, 5],
            **{name: [value] * 2 for name, value in FAST.items()},
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    output = tmp_path / "out"
    before = COMPUTED.copy()
    batch_flow(str(tmp_path / "m.parquet"), str(output), model=str(own_defaults_model), in_flight=1)
    # the model's 7.5 and a given 7.5 are the same computation: one key, computed once
    assert (COMPUTED - before)["keyframes"] == 1
    implicit, explicit = (
        json.loads((output / v / "metadata.json").read_text()) for v in ("implicit", "explicit")
    )
    assert implicit["artifacts"]["keyframes"] == explicit["artifacts"]["keyframes"]
    assert implicit["xa_guidance_used"] == implicit["params"]["xa_guidance"] == 7.5
    assert implicit["params"]["cfg_scale"] == DEFAULT_CFG_SCALE
    assert implicit["params_from"] == {
        "steps": "given",
        "xa_guidance": "model",
        "cfg_scale": "default",
        "cross_frame": "default",
    }
    assert explicit["params_from"]["xa_guidance"] == "given"


def test_generate_uses_the_models_defaults(own_defaults_model, tmp_path):
    out = tmp_path / "video"
    args = ["generate", "--source-prompt", "a red car", "--prompt", "a blue car", "--out", str(out)]
    fast = ["--steps", "3", "--keyframes", "2", "--frames", "2", "--model", str(own_defaults_model)]
    assert main([*args, *fast]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["xa_guidance_used"] == 7.5 and metadata["params_from"]["xa_guidance"] == "model"
    assert main([*args, *fast, "--xa-guidance", "1.0", "--cfg-scale", "3"]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert (metadata["xa_guidance_used"], metadata["params"]["cfg_scale"]) == (1.0, 3.0)
    assert metadata["params_from"] == {
        "steps": "given",
        "xa_guidance": "given",
        "cfg_scale": "given",
        "cross_frame": "default",
    }


def test_a_models_step_count_travels_with_it_and_a_given_one_wins(own_defaults_model, tmp_path):
    # the guidance step is per DDIM step: a model whose guidance was chosen at 4 steps carries the 4
    defaults = json.loads((own_defaults_model / "stillmotion.json").read_text())
    defaults["method_defaults"]["steps"] = 4
    (own_defaults_model / "stillmotion.json").write_text(json.dumps(defaults))
    assert ModelDefaults.of_folder(own_defaults_model).steps == 4
    assert MethodParams().resolve(ModelDefaults(), synthetic=False)[0].steps == 50  # Stable Diffusion's
    out = tmp_path / "video"
    args = ["generate", "--source-prompt", "a red car", "--prompt", "a blue car", "--out", str(out)]
    fast = ["--keyframes", "2", "--frames", "2", "--model", str(own_defaults_model)]
    assert main([*args, *fast]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert (metadata["params"]["steps"], metadata["params_from"]["steps"]) == (4, "model")
    assert main([*args, *fast, "--steps", "3"]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert (metadata["params"]["steps"], metadata["params_from"]["steps"]) == (3, "given")
    defaults["method_defaults"]["steps"] = 2.5
    (own_defaults_model / "stillmotion.json").write_text(json.dumps(defaults))
    with pytest.raises(ValueError, match="steps must be a whole number"):
        ModelDefaults.of_folder(own_defaults_model)


def test_feature_injection_travels_with_the_model_and_a_bad_layer_is_named(
    own_defaults_model, tmp_path, capsys
):
    defaults = json.loads((own_defaults_model / "stillmotion.json").read_text())
    defaults["method_defaults"].update(
        inject_features_real=0.25,
        inject_features_synthetic=0.5,
        inject_layers="up_blocks.2.resnets.0",
        inject_mode="layout",
    )
    (own_defaults_model / "stillmotion.json").write_text(json.dumps(defaults))
    own = ModelDefaults.of_folder(own_defaults_model)
    assert own.inject_layers == ("up_blocks.2.resnets.0",)  # one name alone: a name, not its letters
    assert MethodParams().resolve(own, synthetic=False)[0].inject_features == 0.25  # each mode its own
    assert MethodParams().resolve(ModelDefaults(), synthetic=False)[0].injection_share == 0.0  # SD: off
    assert MethodParams().resolve(ModelDefaults(), synthetic=False)[0].inject_mode == "replace"  # SD: PnP
    out = tmp_path / "video"
    args = ["generate", "--source-prompt", "a red car", "--prompt", "a blue car", "--out", str(out)]
    fast = ["--keyframes", "2", "--frames", "2", "--steps", "3", "--model", str(own_defaults_model)]
    assert main([*args, *fast]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert (
        metadata["params"]["inject_features"] == 0.5 and metadata["params_from"]["inject_features"] == "model"
    )
    assert metadata["params"]["inject_layers"] == ["up_blocks.2.resnets.0"]
    assert (metadata["params"]["inject_mode"], metadata["params_from"]["inject_mode"]) == ("layout", "model")
    assert main([*args, *fast, "--inject-mode", "replace"]) == 0  # a given value wins
    assert json.loads((out / "metadata.json").read_text())["params"]["inject_mode"] == "replace"
    assert main([*args, *fast, "--inject-features", "0"]) == 0  # a given value wins: off
    metadata = json.loads((out / "metadata.json").read_text())
    assert (metadata["params"]["inject_features"], metadata["params_from"]["inject_features"]) == (
        0.0,
        "given",
    )
    capsys.readouterr()
    assert main([*args, *fast, "--inject-layer", "up_blocks.7.resnets.0"]) != 0
    assert "up_blocks.7.resnets.0" in capsys.readouterr().err  # the bad name, and the blocks there are
    defaults["method_defaults"]["inject_mode"] = "colour"
    (own_defaults_model / "stillmotion.json").write_text(json.dumps(defaults))
    with pytest.raises(ValueError, match="inject_mode must be 'replace' or 'layout'"):
        ModelDefaults.of_folder(own_defaults_model)


def test_a_models_inversion_regularization_travels_with_it_and_keys_the_inversion(own_defaults_model):
    defaults = json.loads((own_defaults_model / "stillmotion.json").read_text())
    defaults["method_defaults"]["reg_steps"] = 0
    (own_defaults_model / "stillmotion.json").write_text(json.dumps(defaults))
    own = ModelDefaults.of_folder(own_defaults_model)
    plain, sources = MethodParams().resolve(own, synthetic=False)
    regularized, sd_sources = MethodParams().resolve(ModelDefaults(), synthetic=False)
    assert (plain.reg_steps, sources["reg_steps"]) == (0, "model")
    assert regularized.reg_steps == 5 and "reg_steps" not in sd_sources  # Stable Diffusion: pix2pix-zero's
    assert plain.stage_fields("invert") != regularized.stage_fields("invert")  # not served the other's x_T
    for bad, error in ((2.5, "reg_steps must be a whole number"), (-1, "reg_steps must be in 0..")):
        defaults["method_defaults"]["reg_steps"] = bad
        (own_defaults_model / "stillmotion.json").write_text(json.dumps(defaults))
        with pytest.raises(ValueError, match=error):
            ModelDefaults.of_folder(own_defaults_model)


def test_a_given_bound_of_the_empty_negatives_window_takes_the_methods_other_bound(
    own_defaults_model, tmp_path
):
    defaults = json.loads((own_defaults_model / "stillmotion.json").read_text())
    defaults["method_defaults"].update(negative="empty", negative_from=0.8)
    (own_defaults_model / "stillmotion.json").write_text(json.dumps(defaults))
    own = ModelDefaults.of_folder(own_defaults_model)
    model, sources = MethodParams().resolve(own, synthetic=False)
    assert (model.negative_from, model.negative_until, sources["negative_from"]) == (0.8, 1.0, "model")
    # until 0.5 given: from the method's 0, not the model's 0.8 (no window at all, and no error)
    given, sources = MethodParams(negative_until=0.5).resolve(own, synthetic=False)
    assert (given.negative_from, given.negative_until) == (0.0, 0.5) and "negative_from" not in sources
    assert MethodParams(negative_from=0.5).resolve(own, synthetic=False)[0].negative_until == 1.0
    out = tmp_path / "video"
    args = ["generate", "--source-prompt", "a red car", "--prompt", "a blue car", "--out", str(out)]
    fast = ["--keyframes", "2", "--frames", "2", "--steps", "3", "--model", str(own_defaults_model)]
    assert main([*args, *fast, "--negative-until", "0.5"]) == 0
    params = json.loads((out / "metadata.json").read_text())["params"]
    assert (params["negative_from"], params["negative_until"]) == (0.0, 0.5)
