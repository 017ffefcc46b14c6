"""A tiny, randomly initialised Stable Diffusion + BLIP in the standard Hugging Face layout.

`make_tiny_model(DIR)` writes model_index.json, unet/, vae/, text_encoder/, tokenizer/,
scheduler/, captioner/ and scorers/ (CLIP, DINO-ViT), so tests and offline demos go through the
same `from_pretrained` code as real SD1.4 weights. The UNet keeps SD1.4's block layout (three
cross-attention levels then one plain level, two layers per block) at tiny width, so attention-layer
names match the real model; the VAE has four blocks (scale factor 8) like SD's. Seeds are fixed: two calls
write bit-identical weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# SD1.4's scheduler betas (its scheduler_config.json), as a DDIM config.
SD14_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_BLIP_WORDS = (
    "a an the of in on with and photography photo picture image painting drawing of "
    "cat dog bird horse car house tree flower mountain river sky city street person man woman "
    "red green blue yellow white black small big old young sitting standing next to near at"
).split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def write_clip_tokenizer(folder: Path, words: tuple[str, ...] = ()) -> int:
    """A byte-level CLIP tokenizer that tokenizes any text, as real files; returns its vocab size.

    With no `words` it has 514 tokens and no merges. Each of `words` (lowercase ASCII) gets BPE
    merges that make it one token, so a small world's vocabulary is word-level.
    """
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": 256 + i for i, symbol in enumerate(symbols)})
    merges: list[tuple[str, str]] = []
    for word in words:
        # run BPE with the merges so far, then join what is left left-to-right: merges added later
        # rank higher, so they never change how an earlier word is split
        pieces = _bpe([*word[:-1], word[-1] + "</w>"], merges)
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    vocab.update({_BOS: len(vocab), _EOS: len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    specials = {"bos_token": _BOS, "eos_token": _EOS, "unk_token": _EOS, "pad_token": _EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return len(vocab)


def _bpe(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Apply BPE merges to a word's symbols, lowest rank first (CLIP's algorithm)."""
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    while len(pieces) > 1:
        pairs = [
            (ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(pieces, pieces[1:], strict=False))
        ]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2 :]]
    return pieces


def _save_config(folder: Path, name: str, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(config, indent=2))


def write_pipeline_files(out: Path) -> None:
    """scheduler/ (SD1.4's betas, as DDIM) and model_index.json of a StableDiffusionPipeline folder."""
    _save_config(out / "scheduler", "scheduler_config.json", SD14_SCHEDULER)
    _save_config(
        out,
        "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        },
    )


def make_tiny_model(out: str | Path, seed: int = 0, sample_size: int = 8) -> Path:
    """Write a tiny SD pipeline (latent `sample_size`, so images of 8 x sample_size px) and captioner."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=8,  # as SD1.4's config: 8 heads per attention layer
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=sample_size * 8,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=514,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )
    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    write_clip_tokenizer(out / "tokenizer")
    write_pipeline_files(out)
    make_tiny_captioner(out / "captioner", seed=seed + 3)
    make_tiny_scorers(out / "scorers", seed=seed + 4)
    return out


def make_tiny_scorers(out: Path, seed: int = 0) -> None:
    """Tiny random CLIP and DINO-ViT scorers (32 px images, 8 px patches) in `out/clip`, `out/dino`."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    text = {**tower, "vocab_size": 514, "max_position_embeddings": 77}
    text.update(bos_token_id=512, eos_token_id=513, pad_token_id=513)
    torch.manual_seed(seed)
    clip = CLIPModel(
        CLIPConfig(
            text_config=text, vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16
        )
    )
    clip.save_pretrained(out / "clip", safe_serialization=True)
    write_clip_tokenizer(out / "clip")
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tokenizer = CLIPTokenizer.from_pretrained(out / "clip")
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out / "clip")
    torch.manual_seed(seed + 1)
    dino = ViTModel(ViTConfig(**tower, image_size=32, patch_size=8), add_pooling_layer=False)
    dino.save_pretrained(out / "dino", safe_serialization=True)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out / "dino")


def make_tiny_captioner(out: Path, seed: int = 0) -> None:
    """A tiny BLIP captioner with a handmade word-piece vocabulary ([DEC] as the decoder's bos)."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    out.mkdir(parents=True, exist_ok=True)
    words = list(dict.fromkeys(_BLIP_WORDS))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, "[DEC]"]
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(_write_bert_files(out, tokens))
    processor = BlipProcessor(
        BlipImageProcessor(size={"height": 32, "width": 32}, do_rescale=True, do_normalize=True), tokenizer
    )
    torch.manual_seed(seed)
    config = BlipConfig(
        text_config={
            "vocab_size": len(tokens),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 160,  # BLIP generation needs >= prompt + max_new_tokens
            "bos_token_id": tokens.index("[DEC]"),
            "sep_token_id": tokens.index("[SEP]"),
            "pad_token_id": 0,
            "encoder_hidden_size": 32,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def _write_bert_files(out: Path, tokens: list[str]) -> Path:
    specials = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "bos_token": "[DEC]",
    }
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512, **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return out
