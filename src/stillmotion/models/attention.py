"""Cross-attention (attn2) processors that record reference maps or score guidance against them, and
the cross-frame attention and feature injection by which key frames take the reference pass's own.

Installed with `unet.set_attn_processor` for the attn2 layers only; self-attention (attn1) keeps
its fast SDPA processor, and attn2 itself runs on SDPA whenever the store is "off", so attention
probabilities are materialised only when they are recorded or compared.

    with attention_store(unet) as store:
        store.mode = "record"; unet(...)   # store.reference[name]: (copies * heads, HW, tokens)
        store.mode = "guide"; unet(...)    # store.loss: summed over frames, see CrossAttnMapsProcessor
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from .params import InjectMode

CrossFrame = Literal["off", "replace", "extend", "maps"]


class AttentionStore:
    """State shared by the attention processors during one UNet call."""

    def __init__(self, cross_frame: CrossFrame = "off") -> None:
        self.mode: Literal["off", "record", "guide"] = "off"
        self.reference: dict[str, torch.Tensor] = {}  # layer name -> (copies * heads, HW, tokens)
        self.loss: torch.Tensor | float = 0.0
        # cross-frame attention: the reference pass records each attn1 layer's keys and values, and the
        # key frames' attn1 attends to them (replacing or extending their own) while `keyframes` is set
        self.cross_frame: CrossFrame = cross_frame
        self.keyframes = False  # False: the reference pass (records); True: key frames (attend)
        # name -> (copies, HW, C) each: (keys, values), or (queries, keys) for "maps"
        self.frame_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # feature injection: while `inject` is set, the reference pass records the output of each
        # injected layer and the key frames' passes take it in place of their own (see FeatureInjection)
        self.inject = False
        self.inject_mode: InjectMode = "replace"  # or "layout": see FeatureInjection
        self.features: dict[str, torch.Tensor] = {}  # layer name -> (copies, C, h, w)

    def add_guidance_loss(self, name: str, probs: torch.Tensor, heads: int) -> None:
        """Add sum_frames mean_(copy, head) sum_(pixel, token) (A - A_ref)^2 for one layer.

        With CFG the guided batch is [uncond_1..uncond_K, cond_1..cond_K] against a reference pass of
        [uncond; cond]; without CFG (scale <= 1, as pix2pix-zero) it is [cond_1..cond_K] against
        [cond]. Each frame's term equals pix2pix-zero's loss for that frame alone, so summing gives
        every frame its own gradient.
        """
        reference = self.reference[name]
        pixels, tokens = probs.shape[1:]
        copies = reference.shape[0] // heads  # 2 with CFG, 1 without
        frames = probs.shape[0] // (copies * heads)
        probs = probs.float().view(copies, frames, heads, pixels, tokens)  # (copy, K, heads, HW, T)
        reference = reference.float().view(copies, 1, heads, pixels, tokens)
        per_frame = (probs - reference).pow(2).sum(dim=(-2, -1)).mean(dim=(0, 2))  # (K,)
        self.loss = self.loss + per_frame.sum()


class CrossAttnMapsProcessor:
    """attn2 processor: SDPA when the store is off, explicit probabilities when recording/guiding."""

    def __init__(self, name: str, store: AttentionStore) -> None:
        self.name = name
        self.store = store
        self.fast = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.store.mode == "off":
            return self.fast(attn, hidden_states, encoder_hidden_states, attention_mask)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B * heads, HW, head_dim)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (B * heads, T, head_dim)
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)  # (B * heads, HW, T)
        if self.store.mode == "record":
            self.store.reference[self.name] = probs.detach()
        else:
            self.store.add_guidance_loss(self.name, probs, attn.heads)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))  # (B, HW, heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


def per_frame(reference: torch.Tensor, batch: int) -> torch.Tensor:
    """(copies, ...) reference pass [uncond; cond] -> (batch, ...) for key frames laid out
    [uncond_1..uncond_K, cond_1..cond_K]: each frame gets the reference's copy of its own kind."""
    copies = reference.shape[0]
    return (
        reference[:, None]
        .expand(copies, batch // copies, *reference.shape[1:])
        .reshape(batch, *reference.shape[1:])
    )


class FeatureInjection:
    """Forward hook on a UNet layer (a ResNet block): Plug-and-Play's feature injection (Tumanyan et al.
    2023). While `store.inject` is set the reference pass records the layer's output and the key frames'
    passes replace theirs with it, so the spatial features that fix the layout (PnP: the decoder's 4th
    layer, `up_blocks.1.resnets.1` in Stable Diffusion) come from the source frame, while the layers after
    it, conditioned on the edited text, change the appearance.

    `store.inject_mode` "layout" takes only the source's spatial pattern: its features less their mean over
    the image, plus the key frame's own mean, channel by channel. The source's overall feature level
    (what its colour adds everywhere) no longer holds the key frame back, so an edit of the colour is not
    stopped short on its way from the source's."""

    def __init__(self, name: str, store: AttentionStore) -> None:
        self.name = name
        self.store = store

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        store = self.store
        if not store.inject:
            return None
        if not store.keyframes:
            store.features[self.name] = output.detach()
            return None
        source = per_frame(store.features[self.name], output.shape[0]).to(output.dtype)
        if store.inject_mode == "layout":
            return source - source.mean((-2, -1), keepdim=True) + output.mean((-2, -1), keepdim=True)
        return source


class CrossFrameProcessor:
    """attn1 (self-attention) processor for cross-frame attention.

    In the reference pass it records the layer's keys and values; in the key frames' passes their
    queries attend to the reference's keys and values instead of their own ("replace", as
    Text2Video-Zero attends to its first frame) or as well as their own ("extend", as Tune-A-Video and
    TokenFlow do), so every key frame draws on one shared source of appearance. "maps" records the
    reference's queries and keys instead, and the key frames take the reference's attention maps with
    their own values (Plug-and-Play's self-attention injection, Tumanyan et al. 2023): where each pixel
    looks, hence the layout, comes from the source frame; what it sees, hence the appearance, is the
    key frame's own.
    """

    def __init__(self, name: str, store: AttentionStore) -> None:
        self.name = name
        self.store = store
        self.fast = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        store = self.store
        if store.cross_frame == "off" or hidden_states.ndim != 3:
            return self.fast(attn, hidden_states, encoder_hidden_states, attention_mask)
        if not store.keyframes:
            first = attn.to_q if store.cross_frame == "maps" else attn.to_k
            second = attn.to_k if store.cross_frame == "maps" else attn.to_v
            store.frame_kv[self.name] = (first(hidden_states).detach(), second(hidden_states).detach())
            return self.fast(attn, hidden_states, encoder_hidden_states, attention_mask)
        reference_first, reference_second = store.frame_kv[self.name]  # (copies, HW, C)
        batch = hidden_states.shape[0]

        if store.cross_frame == "maps":
            query, key = per_frame(reference_first, batch), per_frame(reference_second, batch)
            value = attn.to_v(hidden_states)
        else:
            query = attn.to_q(hidden_states)
            key, value = per_frame(reference_first, batch), per_frame(reference_second, batch)
        if store.cross_frame == "extend":
            key = torch.cat([attn.to_k(hidden_states), key], dim=1)
            value = torch.cat([attn.to_v(hidden_states), value], dim=1)
        heads = attn.heads

        def split(tensor: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, C / heads)
            return tensor.view(batch, -1, heads, tensor.shape[-1] // heads).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(split(query), split(key), split(value))
        out = out.transpose(1, 2).reshape(batch, -1, query.shape[-1]).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def injected_layers(unet: torch.nn.Module, names: tuple[str, ...]) -> list[torch.nn.Module]:
    """The UNet's modules of these names (as `named_modules` spells them), or a ValueError naming the ones
    this UNet has that could be injected."""
    modules = dict(unet.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        blocks = [name for name in modules if re.search(r"\.resnets\.\d+$", name)]
        raise ValueError(f"inject_layers: this UNet has no {unknown}; its ResNet blocks: {blocks}")
    return [modules[name] for name in names]


@contextmanager
def attention_store(
    unet: torch.nn.Module,
    cross_frame: CrossFrame = "off",
    inject_layers: tuple[str, ...] = (),
    inject_mode: InjectMode = "replace",
) -> Iterator[AttentionStore]:
    """Install map-capturing processors on every attn2 layer (and, with cross-frame attention, the
    cross-frame processor on every attn1 layer; and a FeatureInjection hook on each of `inject_layers`);
    restore the originals on exit."""
    layers = injected_layers(unet, inject_layers)
    original = dict(unet.attn_processors)
    store = AttentionStore(cross_frame)
    store.inject_mode = inject_mode
    processors = {}
    for name, processor in original.items():
        if ".attn2." in name:
            processors[name] = CrossAttnMapsProcessor(name, store)
        elif ".attn1." in name and cross_frame != "off":
            processors[name] = CrossFrameProcessor(name, store)
        else:
            processors[name] = processor
    unet.set_attn_processor(processors)
    hooks = [
        layer.register_forward_hook(FeatureInjection(name, store))
        for name, layer in zip(inject_layers, layers, strict=True)
    ]
    try:
        yield store
    finally:
        for hook in hooks:
            hook.remove()
        unet.set_attn_processor(original)
