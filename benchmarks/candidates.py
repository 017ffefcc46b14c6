"""Best of N on the toy world: every candidate judged by the toy's rules, and each selection rule scored.

    python benchmarks/candidates.py --sources 8 --candidates 4 --threads 1 --json /tmp/cand.json

For unseen sources (benchmarks/quality.py --unseen's), each recolouring edit is rendered as
stillmotion.models.candidates renders it (real mode: the shared reference pass, the guidance step
x1, 2, 1/2, 4), and every candidate's last key frame is judged with the toy's rules (colour, mask IoU
against the source) beside what the pipeline can see (margin, structure). Each rule of choice is then
scored on the same candidates: fidelity (the last key frame has the target colour) and last IoU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import PIL.Image
import torch

from stillmotion.models import MethodParams, ModelDefaults, load_stable_diffusion
from stillmotion.models.candidates import best, judge, variants
from stillmotion.models.insertion import decode_latents
from stillmotion.models.method import Rendered, invert_source, render_keyframes
from stillmotion.toyworld.judge import judge as toy_judge
from stillmotion.toyworld.judge import mask_iou
from stillmotion.toyworld.quality import edit_prompts, unseen_sources


def _uint8(images: torch.Tensor) -> np.ndarray:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def relative(judged: list[dict], share: float) -> int:
    """Complete = margin >= share x the largest margin (when that is > 0); then the best structure."""
    top = max(j["margin"] for j in judged)
    if top <= 0:
        return largest_margin(judged)
    complete = [i for i, j in enumerate(judged) if j["margin"] >= share * top]
    return max(complete, key=lambda i: (judged[i]["structure"], -i))


def largest_margin(judged: list[dict]) -> int:
    return max(range(len(judged)), key=lambda i: (judged[i]["margin"], -i))


def positive_margin(judged: list[dict]) -> int:
    """The first rule: complete = margin > 0; then the best structure."""
    complete = [i for i, j in enumerate(judged) if j["margin"] > 0]
    return max(complete, key=lambda i: (judged[i]["structure"], -i)) if complete else largest_margin(judged)


RULES = {
    "first (N=1)": lambda judged: 0,
    "margin > 0, then structure (before)": positive_margin,
    "margin >= 0.5 x largest, then structure (candidates.best)": best,
    "margin >= 0.8 x largest, then structure": lambda judged: relative(judged, 0.8),
    "largest margin": largest_margin,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/toyworld")
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sd = load_stable_diffusion(args.model, device="cpu", dtype="fp32")
    params, _ = MethodParams(candidates=args.candidates).resolve(
        ModelDefaults.of_folder(sd.path), synthetic=False
    )
    edits = []
    start = time.perf_counter()
    for n, source in enumerate(unseen_sources(args.sources)):
        image = PIL.Image.fromarray(source.image)
        truth_verdict = toy_judge(source.image)
        inverted = invert_source(sd, image, source.caption, params)
        for colour, prompt in edit_prompts(source.truth, 3, sized=source.sized):
            steps = [v["xa_guidance"] for v in variants(params, False)]
            together = render_keyframes(sd, inverted, source.caption, [prompt], params, False, None, steps)
            made = [
                Rendered(together.source_latent, chunk, together.truncated_prompts)
                for chunk in together.keyframe_latents.chunk(len(steps))
            ]
            candidates = []
            for rendered in made:
                seen = judge(sd, rendered, source.caption, [prompt], params)
                last = toy_judge(_uint8(decode_latents(sd.vae, rendered.keyframe_latents[-1:]))[0])
                seen |= {
                    "colour_ok": last.colour == colour,
                    "last_iou": mask_iou(last.mask, truth_verdict.mask),
                }
                candidates.append(seen)
            edits.append({"source": source.caption, "target": colour, "candidates": candidates})
        print(f"source {n + 1}/{args.sources}: {source.caption}", file=sys.stderr, flush=True)
    table = {}
    for name, rule in RULES.items():
        chosen = [e["candidates"][rule(e["candidates"])] for e in edits]
        table[name] = {
            "fidelity": round(float(np.mean([c["colour_ok"] for c in chosen])), 3),
            "last_iou": round(float(np.mean([c["last_iou"] for c in chosen])), 3),
        }
    oracle = [max(e["candidates"], key=lambda c: (c["colour_ok"], c["last_iou"])) for e in edits]
    table["oracle (the toy's judge)"] = {
        "fidelity": round(float(np.mean([c["colour_ok"] for c in oracle])), 3),
        "last_iou": round(float(np.mean([c["last_iou"] for c in oracle])), 3),
    }
    result = {"edits": len(edits), "seconds": round(time.perf_counter() - start, 1), "rules": table}
    print(json.dumps(result, indent=2))
    print("| rule | fidelity | last IoU |\n|---|---|---|")
    for name, row in table.items():
        print(f"| {name} | {row['fidelity']} | {row['last_iou']} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({**result, "edits_detail": edits}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
