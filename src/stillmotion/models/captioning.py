"""BLIP captions, prompted as diffusers' pix2pix-zero port does ("a photography of")."""

from __future__ import annotations

import PIL.Image
import torch

CAPTION_PROMPT = "a photography of"


@torch.no_grad()
def caption_image(model: torch.nn.Module, processor, image: PIL.Image.Image, max_new_tokens: int = 40) -> str:
    """Greedy BLIP caption of an RGB image (deterministic)."""
    inputs = processor(images=image, text=CAPTION_PROMPT, return_tensors="pt").to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return processor.decode(output[0], skip_special_tokens=True).strip()
