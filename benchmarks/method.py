"""One video (K key frames + frame insertion), timed against the seed's approach in one process.

    python benchmarks/method.py --size tiny --repeats 3      # CPU, a tiny random model
    PYTHONPATH=src python benchmarks/method.py --size sd14   # GPU, SD1.4's architecture at 512 px

(a) the seed's approach: diffusers' StableDiffusionPix2PixZeroPipeline inverts once, then edits K
times (every edit re-runs the reference pass and moves its attention maps through the CPU);
(b) stillmotion: one inversion, then one loop for the reference and all K key frames. Both insert
frames with the same spline and VAE decode, so only the key-frame part differs. Weights are random
(same shapes, same cost). The goal is on the same-dtype ratio; the seed in its default fp32 is
timed too (`--skip-fp32-baseline` to save time on a GPU). Prints a table and a markdown block for
benchmarks/RESULTS.md; `--json PATH` also writes the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from importlib.resources import files
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel

from stillmotion.models import MethodParams, StableDiffusion, edit_weights, load_stable_diffusion
from stillmotion.models.baseline import pix2pix_zero_pipeline
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

RSS_NOTE = "peak RSS of the whole process (process-wide, so a row includes the rows before it)"
CAPTION, PROMPT = "a photo of a cat sitting on a wooden table", "a photo of a dog sitting on a wooden table"


@dataclasses.dataclass
class Result:
    """One path's numbers per video (median over the timed repeats)."""

    name: str
    seconds: float
    forward_equivalents: float  # single-sample UNet forwards; a forward + input backward counts 3
    peak_memory_gib: float  # CUDA: max allocated for this path; CPU: the process's peak RSS so far
    tflops: float = 0.0  # forward_equivalents x FLOPs per forward / seconds


def write_sd14(folder: Path, image_size: int = 512) -> None:
    """SD1.4's UNet, VAE and CLIP text encoder from the packaged configs with random weights (fixed seeds).

    `image_size` other than 512 changes only the UNet's sample size (same layers, same widths).
    """
    configs = files("stillmotion") / "configs" / "sd14"

    def config(part: str, name: str = "config.json") -> dict:
        return json.loads((configs / part / name).read_text())

    torch.manual_seed(0)
    unet = config("unet") | {"sample_size": image_size // 8}
    UNet2DConditionModel.from_config(unet).save_pretrained(folder / "unet", safe_serialization=True)
    torch.manual_seed(1)
    AutoencoderKL.from_config(config("vae")).save_pretrained(folder / "vae", safe_serialization=True)
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(config("text_encoder")))
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    write_clip_tokenizer(folder / "tokenizer")
    (folder / "scheduler").mkdir()
    scheduler = config("scheduler", "scheduler_config.json")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))


def source_image(side: int) -> PIL.Image.Image:
    """A fixed, smooth synthetic RGB image."""
    y, x = np.mgrid[0:side, 0:side] / side
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * np.pi * x * y)], axis=-1)  # (H, W, 3) in [0, 1]
    return PIL.Image.fromarray((rgb * 255).astype(np.uint8))


def seed_video(pipe, sd: StableDiffusion, image: PIL.Image.Image, params: MethodParams) -> torch.Tensor:
    """The seed's approach: invert once, then K separate pix2pix-zero edits; our insertion and decode."""
    generator = seeded_generator(params.seed)
    inverted = pipe.invert(
        CAPTION, image=image, num_inference_steps=params.ddim_steps, generator=generator
    ).latents
    embeds, _ = encode_text(sd.tokenizer, sd.text_encoder, [CAPTION, PROMPT])
    caption_embeds, direction = embeds[:1], embeds[1:] - embeds[:1]
    keyframes = [
        pipe(
            prompt=CAPTION,
            negative_prompt=CAPTION,
            source_embeds=caption_embeds,
            target_embeds=caption_embeds + weight * direction,
            num_inference_steps=params.ddim_steps,
            guidance_scale=params.cfg_scale,
            cross_attention_guidance_amount=params.guidance_for(synthetic=False),
            latents=inverted,
            output_type="latent",
        ).images.float()
        for weight in edit_weights(params.keyframes, params.curve)
    ]
    source_latent = encode_latents(sd.vae, pil_to_tensor(image))  # the pipeline returns no source frame
    return render_frames(sd, Rendered(source_latent, torch.cat(keyframes)), params)


def our_video(sd: StableDiffusion, image: PIL.Image.Image, params: MethodParams) -> torch.Tensor:
    """stillmotion: one inversion, one loop for the reference and every key frame, then insertion."""
    inverted = invert_source(sd, image, CAPTION, params)
    rendered = render_keyframes(sd, inverted, CAPTION, [PROMPT], params, synthetic=False)
    return render_frames(sd, rendered, params)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def measure(name: str, video: Callable, sd: StableDiffusion, params: MethodParams, repeats: int) -> Result:
    """Warm up on a 2-step video (kernels, allocator, autotuning), then time `repeats` whole videos."""
    print(f"timing {name} ...", flush=True)
    video(dataclasses.replace(params, steps=min(params.ddim_steps, 2)))
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
        print(f"note: {name} made non-finite frames (random weights); the timings still stand")
    if sd.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(sd.device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return Result(name, statistics.median(seconds), count[0] / repeats, peak)


def unet_flops(sd: StableDiffusion) -> int:
    """FLOPs of one single-sample UNet forward (multiply-add = 2), with attention as explicit matmuls."""
    original = dict(sd.unet.attn_processors)
    sd.unet.set_attn_processor(AttnProcessor())  # FlopCounterMode does not see the CPU's SDPA kernel
    sample = torch.randn(latent_shape(sd), device=sd.device, dtype=sd.dtype)
    shape = (1, sd.tokenizer.model_max_length, sd.unet.config.cross_attention_dim)
    embeds = torch.randn(shape, device=sd.device, dtype=sd.dtype)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            sd.unet(sample, torch.tensor(500, device=sd.device), encoder_hidden_states=embeds)
    finally:
        sd.unet.set_attn_processor(original)
    return counter.get_total_flops()


def matmul_tflops(device: torch.device) -> tuple[float, str]:
    """A practical peak: an 8192^3 bf16 matmul on CUDA, a 2048^3 fp32 matmul on the CPU."""
    n, dtype, reps = (8192, torch.bfloat16, 50) if device.type == "cuda" else (2048, torch.float32, 5)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    seconds = time.perf_counter() - start
    return 2 * n**3 * reps / seconds / 1e12, f"measured, {n}^3 {str(dtype).removeprefix('torch.')} matmul"


def environment(device: torch.device) -> dict:
    """Date, device name, versions, git commit and the command line, for the report."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?"
        )
        name = f"CPU {model}, torch threads: {torch.get_num_threads()}"
    try:
        git = ["git", "rev-parse", "--short", "HEAD"]
        commit = subprocess.run(git, capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError:  # no git on this machine
        commit = ""
    return {
        "date": datetime.date.today().isoformat(),
        "device": name,
        "versions": f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}",
        "commit": commit or "unknown",
        "command": shlex.join(["python", *sys.argv]),
    }


def markdown(args, info: dict, results: list[Result]) -> str:
    """The block for benchmarks/RESULTS.md."""
    ours = results[-1]
    rows = "\n".join(
        f"| {r.name} | {r.seconds:.3f} | {r.seconds / ours.seconds:.2f}x | {r.peak_memory_gib:.2f} "
        f"| {r.forward_equivalents:.0f} | {r.tflops:.4g} |"
        for r in results
    )
    return f"""### Method benchmark, --size {args.size} ({info["date"]})

- device: {info["device"]}; {info["versions"]}; dtype {info["dtype"]}; commit {info["commit"]}
- command: `{info["command"]}`
- one video: inversion + K={args.keyframes} key frames ({args.steps} steps) + {info["frames"] - 1} inserted \
frames, {info["frames"]} decoded at {info["image_size"]} px; median of {args.repeats} after a warm-up
- **speedup over the seed, same dtype: {info["speedup"]:.2f}x**; {info["fp32_note"]}
- peak memory: {info["memory_note"]}

| path | s / video | vs ours | peak memory (GiB) | UNet forward-equivalents / video | TFLOP/s |
|---|---|---|---|---|---|
{rows}

UNet forward at {info["image_size"]} px: {info["unet_gflops"]:.3f} GFLOP per sample (FlopCounterMode, \
multiply-add = 2). Peak {info["peak_tflops"]:.4g} TFLOP/s ({info["peak_source"]}): floor for ours = \
{ours.forward_equivalents:.0f} x {info["unet_gflops"]:.3f} GFLOP / peak = {info["floor_seconds"]:.3f} s; \
**ours is {info["ratio_to_floor"]:.2f}x the floor**.
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--size", choices=["tiny", "sd14"], default="tiny", help="tiny (64 px) or sd14 (512 px)")
    add(
        "--image-size",
        type=int,
        default=512,
        help="sd14 only: image side in px, a multiple of 64 (default 512, the benchmark's size; a smaller "
        "side is a smoke test of the full architecture on a CPU, not a figure for the goals)",
    )
    add("--keyframes", type=int, default=6, help="key frames K per video")
    add("--steps", type=int, default=50, help="DDIM steps of inversion and editing")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    add("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    add("--repeats", type=int, default=3, help="timed videos per path (the median is kept)")
    add("--skip-fp32-baseline", action="store_true", help="do not also time the seed in fp32")
    add("--threads", type=int, help="CPU threads for torch (default: torch's; 1 on a shared machine)")
    add("--peak-tflops", type=float, help="the device's peak (default: measure a matmul)")
    add("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    if args.image_size % 64 or args.image_size <= 0:
        parser.error(f"--image-size must be a positive multiple of 64, got {args.image_size}")
    if args.size == "tiny" and args.image_size != 512:
        parser.error("--image-size applies to --size sd14 only (the tiny model is 64 px)")
    return args


def main() -> None:
    args = parse_args()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # Random tiny weights drive CPU activations into denormals, which stall x86 float units ~10x
    # (GPUs do not slow down on them); flushing keeps CPU timings about the work, for both paths.
    torch.set_flush_denormal(True)
    if args.threads:  # on a busy machine, OpenMP threads waiting on each other cost 30x on tiny ops
        torch.set_num_threads(args.threads)
    params, repeats = MethodParams(keyframes=args.keyframes, steps=args.steps), args.repeats

    with tempfile.TemporaryDirectory(prefix="stillmotion-bench-") as folder:
        # 1. write the model and load it through the real loading path
        print(f"writing the {args.size} model to {folder} ...", flush=True)
        if args.size == "tiny":
            make_tiny_model(folder)  # 64 px images, 8x8 latents
        else:
            write_sd14(Path(folder), args.image_size)  # 512 px images, 64x64 latents by default
        sd = load_stable_diffusion(folder, args.device, args.dtype)
        dtype = str(sd.dtype).removeprefix("torch.")
        image = source_image(sd.image_size)
        flops = unet_flops(sd)
        print(f"UNet forward: {flops / 1e9:.3f} GFLOP at {sd.image_size} px, {dtype} on {sd.device}")

        # 2. the seed's approach in our dtype, then ours (the pipeline's processors are undone between)
        with pix2pix_zero_pipeline(sd) as pipe:
            seed = measure(
                f"seed (pix2pix-zero), {dtype}", partial(seed_video, pipe, sd, image), sd, params, repeats
            )
        ours = measure(f"stillmotion, {dtype}", partial(our_video, sd, image), sd, params, repeats)
        results = [seed, ours]

        # 3. the seed in its default fp32, from a second copy loaded last so it inflates no other peak
        if dtype == "float32":
            fp32_note = "the seed in fp32 is the row above (ours runs in fp32)"
        elif args.skip_fp32_baseline:
            fp32_note = "the seed in fp32 was skipped (--skip-fp32-baseline)"
        else:
            sd32 = load_stable_diffusion(folder, args.device, "fp32")
            with pix2pix_zero_pipeline(sd32) as pipe:
                seed32 = measure(
                    "seed (pix2pix-zero), fp32", partial(seed_video, pipe, sd32, image), sd32, params, repeats
                )
            results.insert(1, seed32)
            fp32_note = f"speedup over the seed in its default fp32: {seed32.seconds / ours.seconds:.2f}x"
            del sd32, pipe

    # 4. throughput, floor, report
    for r in results:
        r.tflops = r.forward_equivalents * flops / r.seconds / 1e12
    peak, peak_source = (args.peak_tflops, "given") if args.peak_tflops else matmul_tflops(sd.device)
    floor = ours.forward_equivalents * flops / (peak * 1e12)
    memory_note = "torch.cuda.max_memory_allocated per path" if sd.device.type == "cuda" else RSS_NOTE
    info = environment(sd.device) | {
        "dtype": dtype,
        "image_size": sd.image_size,
        "frames": 1 + params.frames_per_segment,
        "unet_gflops": flops / 1e9,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "floor_seconds": floor,
        "ratio_to_floor": ours.seconds / floor,
        "speedup": seed.seconds / ours.seconds,
        "fp32_note": fp32_note,
        "memory_note": memory_note,
    }
    print(f"\n{'path':<30}{'s/video':>10}{'vs ours':>9}{'peak GiB':>10}{'UNet fwd-eq':>13}{'TFLOP/s':>11}")
    for r in results:
        print(
            f"{r.name:<30}{r.seconds:>10.3f}{r.seconds / ours.seconds:>8.2f}x{r.peak_memory_gib:>10.2f}"
            f"{r.forward_equivalents:>13.0f}{r.tflops:>11.4g}"
        )
    print(f"floor for ours {floor:.3f} s at {peak:.4g} TFLOP/s ({peak_source}): {ours.seconds / floor:.2f}x")
    print("\n" + markdown(args, info, results))
    if args.json:
        payload = info | {
            "args": vars(args) | {"json": str(args.json)},
            "results": list(map(dataclasses.asdict, results)),
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
