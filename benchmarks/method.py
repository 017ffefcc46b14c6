"""One video's key frames and frame insertion, timed against the seed's approach, in one process.

    python benchmarks/method.py --size tiny --repeats 3      # CPU, a tiny random model, a few minutes
    PYTHONPATH=src python benchmarks/method.py --size sd14   # GPU, SD1.4's architecture, random weights

(a) the seed's approach: diffusers' StableDiffusionPix2PixZeroPipeline inverts once, then edits K
times (every edit re-runs the reference pass and moves its attention maps through the CPU);
(b) stillmotion: one inversion, then one loop for the reference and all K key frames. Both insert
frames with the same spline and VAE decode, so only the key-frame part differs. Prints a table and
a markdown block for benchmarks/RESULTS.md; `--json PATH` also writes the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import torch
import transformers
from diffusers import AutoencoderKL, DDIMInverseScheduler, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_pix2pix_zero import (
    StableDiffusionPix2PixZeroPipeline,
)
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel

from stillmotion.models import MethodParams, StableDiffusion, edit_weights, load_stable_diffusion
from stillmotion.models.images import pil_to_tensor
from stillmotion.models.inversion import encode_latents
from stillmotion.models.method import (
    Rendered,
    invert_source,
    latent_shape,
    render_frames,
    render_keyframes,
    seeded_generator,
)
from stillmotion.models.text import encode_text
from stillmotion.models.tiny import make_tiny_model, write_clip_tokenizer

CAPTION, PROMPT = "a photo of a cat sitting on a wooden table", "a photo of a dog sitting on a wooden table"


@dataclass
class Result:
    """One path's numbers for one video (medians over the timed repeats)."""

    name: str
    seconds: float
    forward_equivalents: float  # single-sample UNet forwards; a forward + input backward counts 3
    peak_memory_gib: float
    tflops: float = 0.0  # forward_equivalents x FLOPs per forward / seconds


# 1. the model: tiny, or SD1.4's architecture from the packaged configs with random weights


def write_sd14(folder: Path) -> None:
    """SD1.4's UNet, VAE and CLIP text encoder from configs (fixed seeds), saved in the standard layout."""
    configs = files("stillmotion") / "configs" / "sd14"

    def config(part: str, name: str = "config.json") -> dict:
        return json.loads((configs / part / name).read_text())

    torch.manual_seed(0)
    UNet2DConditionModel.from_config(config("unet")).save_pretrained(folder / "unet", safe_serialization=True)
    torch.manual_seed(1)
    AutoencoderKL.from_config(config("vae")).save_pretrained(folder / "vae", safe_serialization=True)
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(config("text_encoder")))
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    write_clip_tokenizer(folder / "tokenizer")
    (folder / "scheduler").mkdir()
    scheduler = config("scheduler", "scheduler_config.json")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))


def write_model(size: str, folder: Path) -> None:
    if size == "tiny":
        make_tiny_model(folder)  # 64 px images, 8x8 latents
    else:
        write_sd14(folder)  # 512 px images, 64x64 latents


def source_image(side: int) -> PIL.Image.Image:
    """A fixed smooth synthetic RGB image."""
    y, x = np.mgrid[0:side, 0:side] / side
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * np.pi * x * y)], axis=-1)  # (H, W, 3) in [0, 1]
    return PIL.Image.fromarray((rgb * 255).astype(np.uint8))


# 2. the two ways to make one video


@contextmanager
def seed_pipeline(sd: StableDiffusion) -> Iterator[StableDiffusionPix2PixZeroPipeline]:
    """diffusers' pix2pix-zero pipeline on our components; it replaces the attention processors for good."""
    original = dict(sd.unet.attn_processors)
    pipe = StableDiffusionPix2PixZeroPipeline(
        vae=sd.vae,
        text_encoder=sd.text_encoder,
        tokenizer=sd.tokenizer,
        unet=sd.unet,
        scheduler=DDIMScheduler.from_config(sd.scheduler_config),
        feature_extractor=None,
        safety_checker=None,
        inverse_scheduler=DDIMInverseScheduler.from_config(sd.scheduler_config),
        caption_generator=None,
        caption_processor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    try:
        yield pipe
    finally:
        sd.unet.set_attn_processor(original)
        sd.unet.requires_grad_(False)


def seed_video(pipe, sd: StableDiffusion, image: PIL.Image.Image, params: MethodParams) -> torch.Tensor:
    """The seed's approach: invert once, then K separate pix2pix-zero edits; our insertion and decode."""
    generator = seeded_generator(params.seed)
    inverted = pipe.invert(
        CAPTION, image=image, num_inference_steps=params.steps, generator=generator
    ).latents
    embeds, _ = encode_text(sd.tokenizer, sd.text_encoder, [CAPTION, PROMPT])
    caption_embeds, prompt_embeds = embeds[:1], embeds[1:]
    keyframes = []
    for weight in edit_weights(params.keyframes, params.curve):
        edited = pipe(
            prompt=CAPTION,
            negative_prompt=CAPTION,
            source_embeds=caption_embeds,
            target_embeds=caption_embeds + weight * (prompt_embeds - caption_embeds),
            num_inference_steps=params.steps,
            guidance_scale=params.cfg_scale,
            cross_attention_guidance_amount=params.guidance_for(synthetic=False),
            latents=inverted,
            output_type="latent",
        ).images
        keyframes.append(edited.float())
    source_latent = encode_latents(sd.vae, pil_to_tensor(image))  # the pipeline does not return it
    return render_frames(sd, Rendered(source_latent, torch.cat(keyframes)), params)


def our_video(sd: StableDiffusion, image: PIL.Image.Image, params: MethodParams) -> torch.Tensor:
    """stillmotion: one inversion, one loop for the reference and every key frame, then insertion."""
    inverted = invert_source(sd, image, CAPTION, params)
    rendered = render_keyframes(sd, inverted, CAPTION, [PROMPT], params, synthetic=False)
    return render_frames(sd, rendered, params)


# 3. measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated CUDA memory since the last reset, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@contextmanager
def count_forwards(unet: torch.nn.Module) -> Iterator[list[float]]:
    """Count single-sample UNet forward-equivalents: a call with grad enabled costs 3, without 1."""
    count = [0.0]
    forward = unet.forward

    def counted(sample, *args, **kwargs):
        count[0] += sample.shape[0] * (3 if torch.is_grad_enabled() else 1)
        return forward(sample, *args, **kwargs)

    unet.forward = counted
    try:
        yield count
    finally:
        del unet.forward  # back to the class's forward


def measure(
    name: str,
    video: Callable[[MethodParams], torch.Tensor],
    sd: StableDiffusion,
    params: MethodParams,
    repeats: int,
) -> Result:
    """Warm up with 2 steps (kernels, allocator, autotuning), then time `repeats` whole videos."""
    frames = video(dataclasses.replace(params, steps=min(params.steps, 2)))
    if sd.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(sd.device)
    seconds = []
    with count_forwards(sd.unet) as count:
        for _ in range(repeats):
            synchronize(sd.device)
            start = time.perf_counter()
            frames = video(params)
            synchronize(sd.device)
            seconds.append(time.perf_counter() - start)
    if not torch.isfinite(frames).all():
        print(f"note: {name} produced non-finite frames (random weights); timings still stand")
    return Result(name, statistics.median(seconds), count[0] / repeats, peak_memory_gib(sd.device))


def unet_flops(sd: StableDiffusion) -> int:
    """FLOPs of one single-sample UNet forward (a multiply-add counts 2), attention as explicit matmuls."""
    original = dict(sd.unet.attn_processors)
    sd.unet.set_attn_processor(AttnProcessor())  # FlopCounterMode does not see every device's SDPA kernel
    sample = torch.randn(latent_shape(sd), device=sd.device, dtype=sd.dtype)
    tokens = sd.tokenizer.model_max_length
    embeds = torch.randn(1, tokens, sd.unet.config.cross_attention_dim, device=sd.device, dtype=sd.dtype)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            sd.unet(sample, torch.tensor(500, device=sd.device), encoder_hidden_states=embeds)
    finally:
        sd.unet.set_attn_processor(original)
    return counter.get_total_flops()


def matmul_tflops(device: torch.device) -> tuple[float, str]:
    """The device's practical peak: a large bf16 matmul on CUDA, a 2048^3 fp32 matmul on the CPU."""
    n, dtype, reps = (8192, torch.bfloat16, 50) if device.type == "cuda" else (2048, torch.float32, 5)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12, f"{n}^3 {str(dtype).split('.')[-1]} matmul"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"CPU: {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return f"CPU: {platform.processor() or platform.machine()}"


def git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    return out.stdout.strip() or "unknown"


# 4. reporting


def report(args, info: dict, results: list[Result]) -> str:
    """A plain table for the terminal and a markdown block for RESULTS.md; returns the markdown."""
    ours, seed = results[-1], results[0]
    if info["device_type"] == "cuda":
        memory = "torch.cuda.max_memory_allocated per path (reset between paths)"
    else:
        memory = "peak RSS of the whole process (monotone: a row includes the rows before it)"
    print(f"\n{'path':<34}{'s/video':>10}{'speedup':>10}{'peak GiB':>10}{'UNet fwd-eq':>13}{'TFLOP/s':>10}")
    for r in results:
        print(
            f"{r.name:<34}{r.seconds:>10.3f}{r.seconds / ours.seconds:>9.2f}x{r.peak_memory_gib:>10.2f}"
            f"{r.forward_equivalents:>13.0f}{r.tflops:>10.3f}"
        )
    print(
        f"UNet forward: {info['unet_gflops']:.2f} GFLOP/sample; peak {info['peak_tflops']:.2f} TFLOP/s "
        f"({info['peak_source']}); floor for ours {info['floor_seconds']:.3f} s; "
        f"ours is {info['ratio_to_floor']:.2f}x the floor\npeak memory: {memory}; {info['fp32_note']}"
    )
    rows = "\n".join(
        f"| {r.name} | {r.seconds:.3f} | {r.seconds / ours.seconds:.2f}x | {r.peak_memory_gib:.2f} "
        f"| {r.forward_equivalents:.0f} | {r.tflops:.3f} |"
        for r in results
    )
    return f"""### Method benchmark: --size {args.size}, {info["date"]}

- device: {info["device"]}; torch {torch.__version__}, diffusers {diffusers.__version__}, \
transformers {transformers.__version__}; dtype {info["dtype"]}; commit {info["commit"]}
- command: `{info["command"]}`
- one video: invert + K={args.keyframes} key frames ({args.steps} steps, CFG 5, cross-attention guidance \
0.1) + {info["frames"]} frames inserted and decoded at {info["image_size"]} px; median of {args.repeats} \
after a warm-up
- speedup of ours over the seed in the same dtype: **{seed.seconds / ours.seconds:.2f}x**; \
{info["fp32_note"]}
- peak memory: {memory}

| path | s / video | time vs ours | peak memory (GiB) | UNet forward-equivalents / video | TFLOP/s |
|---|---|---|---|---|---|
{rows}

UNet forward at {info["image_size"]} px: {info["unet_gflops"]:.2f} GFLOP per sample (FlopCounterMode, \
multiply-add = 2). Peak {info["peak_tflops"]:.2f} TFLOP/s ({info["peak_source"]}); floor for ours = \
{ours.forward_equivalents:.0f} x {info["unet_gflops"]:.2f} GFLOP / peak = {info["floor_seconds"]:.3f} s; \
ours is **{info["ratio_to_floor"]:.2f}x** the floor.
"""


def fp32_note(args, dtype: torch.dtype, results: list[Result]) -> str:
    if dtype == torch.float32:
        return "the seed in fp32 is the same-dtype row (ours runs in fp32)"
    if args.skip_fp32_baseline:
        return "the seed in fp32 was skipped (--skip-fp32-baseline)"
    return f"over the seed in its default fp32: {results[1].seconds / results[-1].seconds:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", choices=["tiny", "sd14"], default="tiny", help="tiny (CPU) or SD1.4 at 512 px"
    )
    parser.add_argument("--keyframes", type=int, default=6, help="key frames K per video")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (inversion and editing)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed videos per path (the median is kept)")
    parser.add_argument("--skip-fp32-baseline", action="store_true", help="do not time the seed in fp32")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak (default: measure a matmul)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args()

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    params = MethodParams(keyframes=args.keyframes, steps=args.steps)

    with tempfile.TemporaryDirectory(prefix="stillmotion-bench-") as folder:
        # 1. write the model once and load it through the real loading path
        print(f"writing the {args.size} model ...", flush=True)
        write_model(args.size, Path(folder))
        sd = load_stable_diffusion(folder, args.device, args.dtype)
        dtype = str(sd.dtype).split(".")[-1]
        image = source_image(sd.image_size)
        flops = unet_flops(sd)
        print(
            f"UNet forward: {flops / 1e9:.2f} GFLOP at {sd.image_size} px, {dtype} on {sd.device}", flush=True
        )

        # 2. the seed's approach in our dtype, then ours (processors restored in between)
        results = []
        with seed_pipeline(sd) as pipe:
            print("timing the seed's approach ...", flush=True)
            results.append(
                measure(
                    f"seed (pix2pix-zero), {dtype}",
                    lambda p: seed_video(pipe, sd, image, p),
                    sd,
                    params,
                    args.repeats,
                )
            )
        print("timing stillmotion ...", flush=True)
        ours = measure(f"stillmotion, {dtype}", lambda p: our_video(sd, image, p), sd, params, args.repeats)

        # 3. the seed in its default fp32, from a second copy loaded last (so it inflates no other peak)
        if not args.skip_fp32_baseline and sd.dtype != torch.float32:
            sd32 = load_stable_diffusion(folder, args.device, "fp32")
            with seed_pipeline(sd32) as pipe:
                print("timing the seed's approach in fp32 ...", flush=True)
                results.append(
                    measure(
                        "seed (pix2pix-zero), fp32",
                        lambda p: seed_video(pipe, sd32, image, p),
                        sd32,
                        params,
                        args.repeats,
                    )
                )
            del sd32, pipe
        results.append(ours)

    # 4. throughput, floor and report
    for r in results:
        r.tflops = r.forward_equivalents * flops / r.seconds / 1e12
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops, "given with --peak-tflops"
    else:
        peak, peak_source = matmul_tflops(sd.device)
        peak_source = "measured " + peak_source
    floor = ours.forward_equivalents * flops / (peak * 1e12)
    info = {
        "date": datetime.date.today().isoformat(),
        "device": device_name(sd.device),
        "device_type": sd.device.type,
        "dtype": dtype,
        "commit": git_commit(),
        "command": shlex.join(["python", *sys.argv]),
        "image_size": sd.image_size,
        "frames": params.frames_per_segment,
        "unet_gflops": flops / 1e9,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "floor_seconds": floor,
        "ratio_to_floor": ours.seconds / floor,
        "speedup": results[0].seconds / ours.seconds,
        "fp32_note": fp32_note(args, sd.dtype, results),
    }
    markdown = report(args, info, results)
    print("\n" + markdown)
    if args.json:
        payload = {
            **info,
            "args": vars(args) | {"json": str(args.json)},
            "results": [dataclasses.asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
