"""Cross-frame attention: key frames' self-attention attends to the reference pass's keys and values, or
takes its attention maps ("maps")."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from stillmotion.models import MethodParams, keyframe_embeddings
from stillmotion.models.attention import AttentionStore, CrossFrameProcessor
from stillmotion.models.keyframes import guided_keyframes
from stillmotion.models.text import encode_text


def attention(query, key, value, heads):
    """Plain multi-head attention, (B, L, C) each, no projections."""
    b, c = query.shape[0], query.shape[-1]

    def split(t):
        return t.view(b, -1, heads, c // heads).transpose(1, 2)

    weights = (split(query) @ split(key).transpose(-1, -2) / (c // heads) ** 0.5).softmax(-1)
    return (weights @ split(value)).transpose(1, 2).reshape(b, -1, c)


@pytest.mark.parametrize("mode", ["replace", "extend", "maps"])
def test_key_frames_attend_to_the_reference_keys_and_values(mode):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16).eval()
    store = AttentionStore(cross_frame=mode)
    processor = CrossFrameProcessor("down.attn1", store)
    copies, frames = 2, 3
    reference = torch.randn(copies, 10, 32)  # [uncond; cond] of the reference pass
    keyframes = torch.randn(copies * frames, 10, 32)  # [uncond x3; cond x3]
    with torch.no_grad():
        recorded = processor(attn, reference)  # the reference pass itself is plain self-attention
        torch.testing.assert_close(recorded, AttnProcessor2_0()(attn, reference))
        store.keyframes = True
        out = processor(attn, keyframes)
        ref_q, ref_k, ref_v = (
            p(reference).repeat_interleave(frames, dim=0) for p in (attn.to_q, attn.to_k, attn.to_v)
        )
        query = attn.to_q(keyframes)
        if mode == "extend":
            ref_k = torch.cat([attn.to_k(keyframes), ref_k], dim=1)
            ref_v = torch.cat([attn.to_v(keyframes), ref_v], dim=1)
        if mode == "maps":  # the reference's maps (its queries and keys), the key frame's own values
            query, ref_v = ref_q, attn.to_v(keyframes)
        expected = attn.to_out[0](attention(query, ref_k, ref_v, heads=2))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_cross_frame_key_frames_batch_like_one_at_a_time_and_change_the_result(sd):
    embeds, _ = encode_text(sd.tokenizer, sd.text_encoder, ["a cat", "a dog", "a bird"])
    caption, prompts = embeds[:1], embeds[1:]
    edited = keyframe_embeddings(caption, prompts, keyframes=2)  # 4 key frames over 2 segments
    x_t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))

    def key_frames(cfg: float, mode: str, batch_size: int = 8) -> torch.Tensor:
        return guided_keyframes(
            sd.unet,
            sd.scheduler_config,
            x_t,
            caption,
            caption,
            edited,
            steps=3,
            cfg_scale=cfg,
            xa_guidance=5.0,
            batch_size=batch_size,
            cross_frame=mode,
        )[1]

    for cfg in (5.0, 1.0):  # with CFG (two copies) and without (one)
        plain = key_frames(cfg, "off")
        for mode in ("replace", "extend", "maps"):
            batched = key_frames(cfg, mode)
            assert (batched - plain).abs().max() > 1e-3, (cfg, mode)  # it does something
            if cfg > 1:  # chunks of one key frame see the same reference keys and values (each copy's own)
                torch.testing.assert_close(key_frames(cfg, mode, batch_size=1), batched, atol=1e-4, rtol=0)


def test_cross_frame_is_a_checked_parameter():
    assert MethodParams().cross == "off"
    with pytest.raises(ValueError, match="cross_frame must be"):
        MethodParams(cross_frame="sideways")
