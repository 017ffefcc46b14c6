"""Quality of the method on the toy world: sampling accuracy, then edits with a guidance sweep.

    python benchmarks/quality.py --model models/toyworld --sources 30 --weights 0 1 3 10
    # the same on 2 cores: two 1-thread shards, then one report
    python benchmarks/quality.py --sources 30 --shard 0/2 --threads 1 --save /tmp/q0.json &
    python benchmarks/quality.py --sources 30 --shard 1/2 --threads 1 --save /tmp/q1.json; wait
    python benchmarks/quality.py --sources 30 --merge /tmp/q0.json /tmp/q1.json
    # issue 30: single edits and two-/three-prompt schedules, real and synthetic, strict landing and the
    # arc rule, on the held-out cases (seed 3030; --case-seed 4321 is the sweep set), as `generate` runs
    python benchmarks/quality.py --schedules --cases 60 --threads 1

Prints a markdown block for benchmarks/RESULTS.md: (1) how often the trained model's own samples
have the prompt's colour and shape (judged by rules checked against ground truth), (2) for each
cross-attention guidance weight: edit fidelity, structure (mask IoU, centroid shift, edge SSIM),
temporal smoothness and seconds per video.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from stillmotion.models import MethodParams, ModelDefaults, load_stable_diffusion
from stillmotion.toyworld.quality import (
    ARC_DEGREES,
    HELD_OUT_SEED,
    LANDING_DEGREES,
    UNSEEN_SEED,
    CaseScore,
    EditScore,
    issue30_cases,
    sampling_accuracy,
    score_cases,
    score_source,
    summarize,
    summarize_cases,
    toy_sources,
    unseen_sources,
)
from stillmotion.toyworld.world import Truth, colour_templates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="models/toyworld")
    parser.add_argument("--sources", type=int, default=30, help="toy source images (3 colour edits each)")
    parser.add_argument(
        "--weights", type=float, nargs="+", help="guidance weights to compare (default: the model's own)"
    )
    parser.add_argument(
        "--unseen",
        action="store_true",
        help="sources not drawn like the training data (other sizes and resolutions, captions with and "
        "without a size word) instead of training-like ones",
    )
    parser.add_argument(
        "--unseen-seed",
        type=int,
        default=UNSEEN_SEED,
        help="draws the unseen sources: another seed is another held-out set (default: the sweeps' own)",
    )
    parser.add_argument(
        "--schedules",
        action="store_true",
        help="issue 30's tables instead: single edits and two-/three-prompt schedules, real and synthetic, "
        "each segment judged by the strict landing and the arc rule, with `generate`'s defaults (K=6, N=24)",
    )
    parser.add_argument("--cases", type=int, default=60, help="--schedules: cases per table")
    parser.add_argument(
        "--case-seed",
        type=int,
        default=HELD_OUT_SEED,
        help=f"--schedules: draws the cases (default {HELD_OUT_SEED}, the held-out set; {UNSEEN_SEED}: "
        "the sweep set)",
    )
    parser.add_argument(
        "--tables",
        nargs="+",
        default=["real/single", "synthetic/single", "real/schedule", "synthetic/schedule"],
        help="--schedules: which tables",
    )
    parser.add_argument(
        "--start-on-input",
        choices=["auto", "on", "off"],
        default="auto",
        help="--schedules: real videos start on the fitted input (method.start_on_input); auto: as "
        "`generate` does",
    )
    parser.add_argument("--keyframes", type=int, help="default: 4 (issue 30's --schedules: generate's 6)")
    parser.add_argument("--frames", type=int, help="default: 8 (--schedules: 4 x keyframes)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the model's own)")
    parser.add_argument("--cfg-scale", type=float, help="default: the model's own")
    parser.add_argument(
        "--cross-frame", choices=["off", "replace", "extend", "maps"], help="default: the model's own"
    )
    parser.add_argument(
        "--insertion",
        nargs="+",
        choices=["spline", "adaptive", "motion"],
        default=[MethodParams().insertion],
        help="frames in between; several: each made from the same key frames",
    )
    parser.add_argument("--candidates", type=int, default=1, help="best of N key-frame sets per edit")
    parser.add_argument("--curve", choices=["log", "linear"], default="log", help="edit-weight curve")
    parser.add_argument(
        "--direction",
        choices=["prompt", "sentences"],
        help="edit direction: E(prompt) - E(caption), or pix2pix-zero's sentence means (default: model's)",
    )
    parser.add_argument(
        "--direction-templates",
        nargs="+",
        metavar="SENTENCE",
        help="sentences with '{}' for --direction sentences; 'toy' for the toy world's colour templates "
        "(default: the model's, else generic ones)",
    )
    parser.add_argument(
        "--xa-until", type=float, help="guidance only in the first fraction of steps (default: the model's)"
    )
    parser.add_argument(
        "--xa-schedule", choices=["constant", "linear"], help="guidance step over time (default: the model's)"
    )
    parser.add_argument(
        "--inbetween",
        choices=["embedding", "latent"],
        help="in-between key frames from edited embeddings, or latent interpolation (default: the model's)",
    )
    parser.add_argument(
        "--negative",
        choices=["caption", "empty", "neutral"],
        help="real mode's CFG negative for the key frames (default: the model's)",
    )
    parser.add_argument(
        "--negative-until", type=float, help="--negative empty/neutral for the first fraction of steps only"
    )
    parser.add_argument(
        "--negative-from", type=float, help="--negative empty/neutral from this fraction of steps on"
    )
    parser.add_argument(
        "--edit-from", type=float, help="key frames follow the reference for this fraction of the steps"
    )
    parser.add_argument(
        "--inject-features", type=float, help="key frames take the reference's features for this fraction"
    )
    parser.add_argument("--inject-layer", dest="inject_layers", action="append", help="repeatable")
    parser.add_argument(
        "--inject-mode", choices=["replace", "layout"], help="the source's features or their layout alone"
    )
    parser.add_argument("--label", default="", help="a name for this variant in the report")
    parser.add_argument("--samples-per-prompt", type=int, default=8, help="0: skip the sampling check")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--shard",
        default="0/1",
        metavar="I/N",
        help="score only sources I, I+N, ... (run N processes of 1 thread on N cores, then --merge)",
    )
    parser.add_argument("--save", type=Path, help="write the scores of this run here (JSON) for --merge")
    parser.add_argument("--merge", type=Path, nargs="+", help="report on saved runs instead of running")
    return parser.parse_args(argv)


def method_params(
    args: argparse.Namespace, sd, synthetic: bool, keyframes: int | None = None, frames: int | None = None
) -> MethodParams:
    """The model's own defaults (its stillmotion.json) where no flag is given, as a user's run would;
    `keyframes` and `frames` where no flag gives them (else MethodParams' own)."""
    templates = args.direction_templates
    if templates == ["toy"]:
        templates = colour_templates()
    return MethodParams(
        **({"keyframes": args.keyframes or keyframes} if args.keyframes or keyframes else {}),
        frames=args.frames or frames,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        cross_frame=args.cross_frame,
        candidates=args.candidates,
        curve=args.curve,
        direction=args.direction,
        direction_templates=tuple(templates) if templates else None,
        xa_until=args.xa_until,
        xa_schedule=args.xa_schedule,
        inbetween=args.inbetween,
        negative=args.negative,
        negative_until=args.negative_until,
        negative_from=args.negative_from,
        edit_from=args.edit_from,
        inject_features=args.inject_features,
        inject_layers=tuple(args.inject_layers) if args.inject_layers else None,
        inject_mode=args.inject_mode,
    ).resolve(ModelDefaults.of_folder(sd.path), synthetic=synthetic)[0]


def run_schedules(args: argparse.Namespace) -> dict:
    """Issue 30's tables: every case made as `generate` makes it, judged segment by segment."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sd = load_stable_diffusion(args.model, device="cpu", dtype="fp32")
    params_for = {mode: method_params(args, sd, mode == "synthetic") for mode in ("real", "synthetic")}
    start = {"auto": None, "on": True, "off": False}[args.start_on_input]
    shard, shards = (int(x) for x in args.shard.split("/"))
    scores = []
    for table in args.tables:
        mode, kind = table.split("/")
        cases = issue30_cases(mode, kind, args.cases, args.case_seed)
        mine = [c for c in cases if c.group % shards == shard]
        scores += score_cases(sd, mine, params_for, args.label, start)
        print(f"{table}: {len(mine)} cases", file=sys.stderr, flush=True)
    args.options = {mode: p.keyframe_options() for mode, p in params_for.items()}
    return {
        "schedules": [dataclasses.asdict(s) for s in scores],
        "threads": torch.get_num_threads(),
        "args": {k: v for k, v in vars(args).items() if k not in ("save", "merge")},
    }


def report_schedules(runs: list[dict]) -> None:
    scores = [CaseScore(**r) for run in runs for r in run["schedules"]]
    args = argparse.Namespace(**runs[0]["args"])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"### Toy-world schedules and strict landing (issue 30) — {dt.date.today()} — "
        f"{platform.processor() or platform.machine()}, commit {commit}\n"
    )
    print(
        f"Command: `python benchmarks/quality.py --schedules --cases {args.cases} "
        f"--case-seed {args.case_seed}"
        f"{' --label ' + args.label if args.label else ''}` (options beyond Stable Diffusion's: "
        f"{args.options}). Lands: last key frame within {LANDING_DEGREES:.0f} degrees of the target colour's "
        f"own hue, and the source's shape; detour: some frame more than {ARC_DEGREES:.0f} degrees outside "
        "the arc from the segment's start (the previous segment's measured end) to its target.\n"
    )
    rows = summarize_cases(scores)
    header = [
        "variant",
        "mode",
        "kind",
        "cases",
        "segments",
        "cases_landed",
        "segments_landed",
        "shape_kept",
        "median_hue_error",
        "last_iou",
        "mean_iou",
        "detours",
        "hollow",
        "source_ok",
    ]
    print_table(rows, header)
    print("\nWhere the misses come from (shares of the cases; see toyworld.quality.miss_causes):\n")
    print_table(
        rows, ["variant", "mode", "kind", "cases_landed", "missed_source", "missed_colour", "missed_shape"]
    )
    real = [r for r in rows if r["mode"] == "real"]
    if real:
        print("\nFirst frame of real-mode videos (source.png) against the fitted input:\n")
        print_table(
            real,
            [
                "variant",
                "kind",
                "cases",
                "first_hue_error",
                "first_within_10",
                "first_iou",
                "vae_hue_error",
                "first_step_ratio",
                "first_step_over_1",
            ],
        )


def run(args: argparse.Namespace) -> dict:
    """Sampling accuracy (shard 0 only) and the edit scores of this shard's sources."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sd = load_stable_diffusion(args.model, device="cpu", dtype="fp32")
    shard, shards = (int(x) for x in args.shard.split("/"))
    accuracy = None
    if shard == 0 and args.samples_per_prompt:
        start = time.perf_counter()
        accuracy = sampling_accuracy(sd, args.samples_per_prompt, steps=25, cfg=3.0, seed=0)
        accuracy["seconds"] = time.perf_counter() - start
        print(f"sampling accuracy: {accuracy}", file=sys.stderr, flush=True)
    # the model's own defaults (its stillmotion.json) where no flag is given, as a user's run would
    params = method_params(args, sd, synthetic=False, keyframes=4, frames=8)
    args.cfg_scale, args.cross_frame, args.steps = params.cfg_scale, params.cross_frame, params.ddim_steps
    args.keyframes, args.frames = params.keyframes, params.frames_per_segment
    args.options = params.keyframe_options()
    args.weights = args.weights or [params.xa_guidance]
    scores = []
    sources = unseen_sources(args.sources, args.unseen_seed) if args.unseen else toy_sources(args.sources)
    for i, source in enumerate(sources):
        if i % shards == shard:
            scores += score_source(
                sd, source, args.weights, params, insertions=args.insertion, variant=args.label
            )
            print(f"source {i + 1}/{args.sources}: {source.caption}", file=sys.stderr, flush=True)
    return {
        "accuracy": accuracy,
        "scores": [dataclasses.asdict(score) for score in scores],
        "threads": torch.get_num_threads(),
        "args": {k: v for k, v in vars(args).items() if k not in ("save", "merge")},
    }


def load_scores(records: list[dict]) -> list[EditScore]:
    return [
        EditScore(**{**r, "source": Truth(**{**r["source"], "center": tuple(r["source"]["center"])})})
        for r in records
    ]


def main() -> None:
    args = parse_args()
    merged = [json.loads(path.read_text()) for path in args.merge or ()]
    if args.schedules or any("schedules" in r for r in merged):  # saved --schedules runs merge as such
        runs = merged or [run_schedules(args)]
        if args.save:
            args.save.write_text(json.dumps(runs[0]))
        report_schedules(runs)
        return
    runs = merged or [run(args)]
    if args.save:
        args.save.write_text(json.dumps(runs[0]))
    accuracy = next((r["accuracy"] for r in runs if r["accuracy"]), None)
    scores = load_scores([s for r in runs for s in r["scores"]])
    rows = summarize(scores)
    args = argparse.Namespace(**runs[0]["args"])  # what was run, also when merging

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    threads = " + ".join(str(r["threads"]) for r in runs)
    print(
        f"### Toy-world quality — {dt.date.today()} — {platform.processor() or platform.machine()}, "
        f"{len(runs)} process(es) of {threads} thread(s), commit {commit}\n"
    )
    print(
        f"Command: `python benchmarks/quality.py --model {args.model} --sources {args.sources}"
        f"{' --unseen' if getattr(args, 'unseen', False) else ''}"
        f"{_seed_flag(getattr(args, 'unseen_seed', UNSEEN_SEED))}"
        f" --weights "
        f"{' '.join(str(w) for w in args.weights)}` "
        f"(K={args.keyframes}, N={args.frames}, steps {args.steps}, CFG {args.cfg_scale}, "
        f"cross-frame {getattr(args, 'cross_frame', None) or 'off'}, curve {getattr(args, 'curve', 'log')}, "
        f"insertion {' / '.join(getattr(args, 'insertion', ['spline']))}, "
        f"best of {getattr(args, 'candidates', 1)}, options {getattr(args, 'options', {})})\n"
    )
    if accuracy:
        print(
            f"Samples of the model itself (DDIM 25, CFG 3, {accuracy['samples']} images, "
            f"{accuracy['seconds']:.0f} s): colour right {accuracy['colour']:.1%}, "
            f"shape right {accuracy['shape']:.1%}.\n"
        )
    header = [
        "xa_guidance",
        "insertion",
        "edits",
        "colour_fidelity",
        "shape_kept",
        "last_iou",
        "mask_iou",
        "detours",
        "overshoots",
        "key_detours",
        "spline_detours",
        "hollow_last",
        "recon_iou",
        "recon_colour",
        "vae_iou",
        "centroid_shift_px",
        "edge_ssim",
        "mean_step",
        "worst_over_mean",
        "seconds_per_video",
        "insert_seconds",
    ]
    print_table(rows, header)
    # where the misses are: the same means by the source's shape (triangles are the thinnest shapes, so a
    # pixel's shrink costs them the most IoU)
    print("\nBy source shape:\n")
    by_shape = ["colour_fidelity", "shape_kept", "last_iou", "mask_iou", "detours", "overshoots", "recon_iou"]
    print_table(summarize(scores, by_shape=True), ["xa_guidance", "shape", "edits", *by_shape])


def _seed_flag(seed: int) -> str:
    return "" if seed == UNSEEN_SEED else f" --unseen-seed {seed}"


def print_table(rows: list[dict], header: list[str]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = (f"{row[h]:.3f}" if isinstance(row[h], float) else str(row[h]) for h in header)
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
