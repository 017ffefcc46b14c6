"""Model loading: the tiny model goes through the real from_pretrained code, safetensors only."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stillmotion.models import (
    ModelNotAvailable,
    identity,
    load_captioner,
    load_stable_diffusion,
    resolve_device,
    resolve_dtype,
)
from stillmotion.models.identity import captioner_identity, inspect_model, looks_like_path
from stillmotion.models.tiny import make_tiny_model


def digests(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_tiny_model_is_seeded_small_and_in_hf_layout(tiny_model_dir, tmp_path):
    again = make_tiny_model(tmp_path / "again")
    assert digests(again) == digests(tiny_model_dir)  # bit-identical weights and files
    for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "captioner"):
        assert (tiny_model_dir / part).exists()
    assert not list(tiny_model_dir.rglob("*.bin"))
    size = sum(p.stat().st_size for p in tiny_model_dir.rglob("*") if p.is_file())
    assert size < 8 * 2**20
    other = make_tiny_model(tmp_path / "other", seed=1)
    assert (
        digests(other)["unet/diffusion_pytorch_model.safetensors"]
        != digests(again)["unet/diffusion_pytorch_model.safetensors"]
    )


def test_tiny_model_has_sd14_attention_layout(sd):
    names = [name for name in sd.unet.attn_processors if ".attn2." in name]
    # SD1.4: 3 down levels x 2 + mid 1 + 3 up levels x 3 = 16 cross-attention layers
    assert len(names) == 16
    assert "down_blocks.0.attentions.1.transformer_blocks.0.attn2.processor" in names
    assert "mid_block.attentions.0.transformer_blocks.0.attn2.processor" in names
    assert sd.vae_scale_factor == 8 and sd.image_size == 64


def test_tokenizer_handles_any_text(sd):
    for text in ["a cat", "一只猫", "🐱🚗", "naïve café"]:
        ids = sd.tokenizer(text).input_ids
        assert len(ids) > 2 and sd.tokenizer.decode(ids, skip_special_tokens=True).strip() == text.lower()
    assert sd.tokenizer("a cat").input_ids != sd.tokenizer("a dog").input_ids


def test_loads_with_fingerprint_revision_and_dtype(tiny_model_dir):
    first = load_stable_diffusion(str(tiny_model_dir), device="cpu", dtype="bf16")
    assert first.unet.dtype == torch.bfloat16 and first.revision.startswith("local-")
    assert not any(p.requires_grad for p in first.unet.parameters())
    second = load_stable_diffusion(str(tiny_model_dir), device="cpu", dtype="fp32")
    assert second.revision == first.revision
    captioner = load_captioner(tiny_model_dir)
    assert captioner.model_id.endswith("captioner")


def test_hub_id_offline_fails_clearly():
    with pytest.raises(ModelNotAvailable, match="no-such/model.*local folder"):
        load_stable_diffusion("no-such/model", device="cpu")


def test_folder_without_safetensors_fails_clearly(tiny_model_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))  # a pickle-format file must not be loaded
    with pytest.raises(ModelNotAvailable, match="safetensors"):
        load_stable_diffusion(str(broken), device="cpu")
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelNotAvailable, match="vae"):
        load_stable_diffusion(str(broken), device="cpu")


def test_device_and_dtype_resolution():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("fp16", cpu) == torch.float16
    with pytest.raises(ValueError):
        resolve_dtype("int8", cpu)
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


# model identity: a local folder's revision covers the files its loader reads, hashed once per file


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path, monkeypatch):
    """A private copy of the tiny model (the session's is shared), with its own hash cache."""
    monkeypatch.setenv("STILLMOTION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(identity, "_HASHES", {})
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def test_revision_ignores_what_the_stages_do_not_load(model_copy, tiny_model_dir):
    shutil.rmtree(model_copy / "captioner")
    shutil.rmtree(model_copy / "scorers")
    before = inspect_model(str(model_copy)).revision
    assert re.fullmatch(r"local-[0-9a-f]{16}", before)
    (model_copy / "notes").mkdir()
    (model_copy / "notes" / "x.txt").write_text("tried a higher guidance")
    (model_copy / "train.log").write_text("step 1 loss 0.1\n")
    (model_copy / "unet" / "README.txt").write_text("fine-tuned on cats")
    shutil.copytree(tiny_model_dir / "captioner", model_copy / "captioner")
    shutil.copytree(tiny_model_dir / "scorers", model_copy / "scorers")
    (model_copy / "stillmotion.json").write_text(json.dumps({"method_defaults": {"cfg_scale": 7.5}}))
    changed = inspect_model(str(model_copy))
    assert changed.defaults.cfg_scale == 7.5  # stillmotion.json acts through the defaults it gives
    assert changed.revision == before


def test_revision_changes_with_weights_and_scheduler(model_copy):
    before = inspect_model(str(model_copy)).revision
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    after_weights = inspect_model(str(model_copy)).revision
    assert after_weights != before
    config = model_copy / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "beta_end": 0.02}))
    assert inspect_model(str(model_copy)).revision not in (before, after_weights)


def test_captioner_revision_covers_captioner_only(model_copy):
    _, path, before = captioner_identity(model_copy)
    assert path == model_copy / "captioner" and before.startswith("local-")
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[::-1])
    assert captioner_identity(model_copy)[2] == before
    config = model_copy / "captioner" / "generation_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_length": 7}))
    assert captioner_identity(model_copy)[2] != before


def test_disk_cache_spares_rereading_unchanged_weights(model_copy, tmp_path):
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    cached = inspect_model(str(model_copy)).revision
    cache_file = tmp_path / "cache" / "file-hashes.json"
    assert str(weights) in json.loads(cache_file.read_text())["files"]
    identity._HASHES.clear()  # a new process: only the disk cache knows the hashes
    stat = weights.stat()
    weights.write_bytes(bytes(reversed(weights.read_bytes())))  # other bytes, same size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert inspect_model(str(model_copy)).revision == cached  # the file was not read again
    os.utime(weights)  # touched: a new mtime, so it is read again
    assert inspect_model(str(model_copy)).revision != cached


def test_corrupt_or_unwritable_hash_cache_is_not_an_error(model_copy, tmp_path, monkeypatch):
    revision = inspect_model(str(model_copy)).revision
    cache_file = tmp_path / "cache" / "file-hashes.json"
    cache_file.write_text("{not json")
    identity._HASHES.clear()
    assert inspect_model(str(model_copy)).revision == revision
    assert json.loads(cache_file.read_text())["version"] == 1  # rewritten
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("STILLMOTION_CACHE_DIR", str(blocker / "cache"))  # cannot be a folder
    identity._HASHES.clear()
    assert inspect_model(str(model_copy)).revision == revision


def test_identity_imports_no_torch(tiny_model_dir, tmp_path):
    script = (
        "import sys\n"
        "import stillmotion.models.identity as identity\n"
        f"info = identity.inspect_model({str(tiny_model_dir)!r})\n"
        "heavy = sorted(name for name in ('torch', 'diffusers', 'transformers') if name in sys.modules)\n"
        "print(info.revision, heavy)\n"
    )
    env = {**os.environ, "STILLMOTION_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split(" ", 1)[1].strip() == "[]"
    assert done.stdout.startswith("local-")


@pytest.mark.parametrize("model", ["/nonexistent", "./no-model", "~/no-such-model", "no/such/model"])
def test_missing_model_folder_fails_as_a_folder(model):
    with pytest.raises(ModelNotAvailable, match=f"^model folder {re.escape(model)} does not exist$"):
        inspect_model(model)


def test_hub_ids_are_not_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_like_path("CompVis/stable-diffusion-v1-4") and not looks_like_path("gpt2")
    (tmp_path / "models").mkdir()
    assert looks_like_path("models/sd14")  # under a folder that exists here
    with pytest.raises(ModelNotAvailable, match="model folder models/sd14 does not exist"):
        inspect_model("models/sd14")


def test_no_captioner_offline_names_the_caption_as_the_fix(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("captioner"))
    with pytest.raises(ModelNotAvailable) as error:
        captioner_identity(folder)
    message = str(error.value)
    assert "has no captioner/" in message and "caption" in message.split(";")[-1]
    assert "--model" not in message  # the model folder was never the problem
