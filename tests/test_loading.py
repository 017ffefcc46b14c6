"""Model loading: the tiny model goes through the real from_pretrained code, safetensors only."""

import hashlib

import pytest
import torch

from stillmotion.models import (
    ModelNotAvailable,
    load_captioner,
    load_stable_diffusion,
    resolve_device,
    resolve_dtype,
)
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
    import shutil

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
