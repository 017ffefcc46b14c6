"""CLIP text embeddings, as diffusers' encode_prompt computes them (no attention mask, no CLIP skip)."""

from __future__ import annotations

import torch


@torch.no_grad()
def encode_text(
    tokenizer, text_encoder: torch.nn.Module, prompts: list[str]
) -> tuple[torch.Tensor, list[bool]]:
    """Prompts to fp32 embeddings (B, 77, D) and, per prompt, whether it was truncated to fit."""
    max_length = tokenizer.model_max_length
    tokens = tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    lengths = [len(ids) for ids in tokenizer(prompts, truncation=False).input_ids]
    embeds = text_encoder(tokens.input_ids.to(text_encoder.device))[0]  # (B, 77, D)
    return embeds.float(), [length > max_length for length in lengths]
