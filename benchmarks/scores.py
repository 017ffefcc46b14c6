"""What scoring adds to a video's compute, on the toy model (issue 15: <= 5% basic, <= 15% with models).

    python benchmarks/scores.py --model models/toyworld --repeats 3 --threads 2

Times one real-mode video's model work (inversion, key frames, frames; K=4, N=8, 25 steps: the
quality benchmark's settings) and then its scores: the basic ones (stillmotion.metrics), with the tiny
scorers `make-tiny-model` writes, and with the real scorers' architectures (CLIP ViT-B/32, DINO ViT-S/8,
random weights: the same cost as the hub's). Prints medians over --repeats and a markdown block.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from stillmotion.models import MethodParams, ModelDefaults, load_stable_diffusion
from stillmotion.models.method import invert_source, render_frames, render_keyframes
from stillmotion.models.scoring import Scorers, find_scorers, frame_prompts, load_scorers, video_scores
from stillmotion.models.tiny import make_tiny_scorers
from stillmotion.toyworld.world import render, sample_truth


def full_size_scorers() -> Scorers:
    """CLIP ViT-B/32 and DINO ViT-S/8 as the hub has them (configs only; random weights, same cost)."""
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

    with tempfile.TemporaryDirectory() as folder:  # a tokenizer for the processor: the tiny one's files
        make_tiny_scorers(Path(folder), seed=0)
        tokenizer = CLIPTokenizer.from_pretrained(Path(folder) / "clip")
    clip = CLIPModel(CLIPConfig()).eval()  # defaults: ViT-B/32, 224 px
    vits8 = {"hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536, "patch_size": 8}
    dino = ViTModel(ViTConfig(**vits8, image_size=224), add_pooling_layer=False).eval()
    return Scorers(
        clip=clip,
        clip_processor=CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer),
        dino=dino,
        dino_processor=ViTImageProcessor(size={"height": 224, "width": 224}),
    )


def median_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model", default="models/toyworld")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sd = load_stable_diffusion(args.model, device="cpu", dtype="fp32")
    truth = sample_truth(np.random.default_rng(0), shape="circle", colour="red")
    image = PIL.Image.fromarray(render(truth)).resize((sd.image_size, sd.image_size))
    params, _ = MethodParams(keyframes=4, frames=8, steps=25).resolve(
        ModelDefaults.of_folder(sd.path), synthetic=False
    )
    prompts = ["a big blue circle"]
    video = {}

    def make() -> None:
        inverted = invert_source(sd, image, truth.caption, params)
        rendered = render_keyframes(sd, inverted, truth.caption, prompts, params, synthetic=False)
        frames = render_frames(sd, rendered, params)
        video["frames"] = ((frames.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()

    made = median_seconds(make, args.repeats)
    frames, source = video["frames"], np.asarray(image)
    per_frame = frame_prompts(prompts, params.frames_per_segment)
    with tempfile.TemporaryDirectory() as folder:
        make_tiny_scorers(Path(folder) / "scorers", seed=0)
        tiny = load_scorers(find_scorers(folder)[0])
        rows = {
            "basic": median_seconds(lambda: video_scores(frames, source, per_frame), args.repeats),
            "basic + tiny scorers": median_seconds(
                lambda: video_scores(frames, source, per_frame, tiny), args.repeats
            ),
        }
    full = full_size_scorers()
    video_scores(frames, source, per_frame, full)  # warm-up
    rows["basic + CLIP B/32 + DINO S/8 (full size)"] = median_seconds(
        lambda: video_scores(frames, source, per_frame, full), args.repeats
    )
    print(
        f"### Scoring cost — {dt.date.today()} — {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} thread(s)\n"
    )
    print(
        f"Command: `python benchmarks/scores.py --model {args.model} --repeats {args.repeats}`; one "
        f"real-mode video of {len(frames)} frames at {sd.image_size} px (K=4, N=8, 25 steps): {made:.2f} s "
        f"(median of {args.repeats}).\n"
    )
    print("| scores | seconds | share of the video's compute |")
    print("|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.3f} | {seconds / made:.1%} |")


if __name__ == "__main__":
    main()
