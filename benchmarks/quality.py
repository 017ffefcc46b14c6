"""Quality of the method on the toy world: sampling accuracy, then edits with a guidance sweep.

    python benchmarks/quality.py --model models/toyworld --sources 30 --weights 0 1 3 10

Prints a markdown block for benchmarks/RESULTS.md: (1) how often the trained model's own samples
have the prompt's colour and shape (judged by rules checked against ground truth), (2) for each
cross-attention guidance weight: edit fidelity, structure (mask IoU, centroid shift, edge SSIM),
temporal smoothness and seconds per video.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import subprocess
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from stillmotion.models import MethodParams, load_stable_diffusion
from stillmotion.toyworld.judge import judge
from stillmotion.toyworld.quality import score_source, summarize, toy_sources
from stillmotion.toyworld.world import COLOURS, SHAPES


def sampling_accuracy(sd, per_prompt: int, steps: int, cfg: float, seed: int) -> dict:
    """Text-to-image with diffusers' own pipeline over the model's components."""
    pipe = StableDiffusionPipeline(
        vae=sd.vae,
        text_encoder=sd.text_encoder,
        tokenizer=sd.tokenizer,
        unet=sd.unet,
        scheduler=DDIMScheduler.from_config(sd.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    colour_ok = shape_ok = total = 0
    for colour in COLOURS:
        for shape in SHAPES:
            prompt = f"a big {colour} {shape}"
            generator = torch.Generator().manual_seed(seed)
            images = pipe(
                [prompt] * per_prompt,
                num_inference_steps=steps,
                guidance_scale=cfg,
                height=sd.image_size,
                width=sd.image_size,
                generator=generator,
                output_type="np",
            ).images
            for image in (images * 255).round().astype(np.uint8):
                verdict = judge(image)
                colour_ok += verdict.colour == colour
                shape_ok += verdict.shape == shape
                total += 1
    return {"samples": total, "colour": colour_ok / total, "shape": shape_ok / total}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="models/toyworld")
    parser.add_argument("--sources", type=int, default=30, help="toy source images (3 colour edits each)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 3.0, 10.0])
    parser.add_argument("--keyframes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg-scale", type=float, default=5.0)
    parser.add_argument("--samples-per-prompt", type=int, default=8)
    args = parser.parse_args()

    torch.manual_seed(0)
    sd = load_stable_diffusion(args.model, device="cpu", dtype="fp32")
    start = time.perf_counter()
    accuracy = sampling_accuracy(sd, args.samples_per_prompt, steps=25, cfg=3.0, seed=0)
    sampling_seconds = time.perf_counter() - start
    params = MethodParams(
        keyframes=args.keyframes, frames=args.frames, steps=args.steps, cfg_scale=args.cfg_scale
    )
    scores = []
    for truth in toy_sources(args.sources):
        scores += score_source(sd, truth, args.weights, params)
    rows = summarize(scores)

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"### Toy-world quality — {dt.date.today()} — {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, commit {commit}\n"
    )
    print(
        f"Command: `python benchmarks/quality.py --model {args.model} --sources {args.sources} --weights "
        f"{' '.join(str(w) for w in args.weights)}` "
        f"(K={args.keyframes}, N={args.frames}, steps {args.steps}, CFG {args.cfg_scale})\n"
    )
    print(
        f"Samples of the model itself (DDIM 25, CFG 3, {accuracy['samples']} images, "
        f"{sampling_seconds:.0f} s): colour right {accuracy['colour']:.1%}, "
        f"shape right {accuracy['shape']:.1%}.\n"
    )
    header = [
        "xa_guidance",
        "edits",
        "colour_fidelity",
        "shape_kept",
        "mask_iou",
        "centroid_shift_px",
        "edge_ssim",
        "mean_step",
        "worst_over_mean",
        "seconds_per_video",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print(
            "| "
            + " | ".join(f"{row[h]:.3f}" if isinstance(row[h], float) else str(row[h]) for h in header)
            + " |"
        )


if __name__ == "__main__":
    main()
