"""`stillmotion generate` end to end on the tiny model: outputs, MP4, seeds, errors."""

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest

from stillmotion.cli import main
from stillmotion.outputs import sha256

FAST = ["--steps", "4", "--keyframes", "2", "--frames", "3"]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "in.png"
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(path)
    return path


def generate(model, out, *args):
    return main(["generate", "--model", str(model), "--out", str(out), *FAST, *args])


def decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, stream


def test_generate_writes_a_complete_video(tiny_model_dir, image_path, tmp_path):
    out = tmp_path / "video"
    code = generate(
        tiny_model_dir, out, "--image", str(image_path), "--prompt", "a dog", "--prompt", "a bird"
    )
    assert code == 0
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    keyframes = [f"keyframes/{i:03d}.png" for i in range(4)]  # 2 segments x 2 key frames
    assert names == sorted(["video.mp4", "source.png", "preview.png", "metadata.json", *keyframes])

    frames, stream = decode(out / "video.mp4")
    assert len(frames) == 1 + 3 * 2  # source + N x segments
    assert frames[0].shape == (64, 64, 3)
    assert stream.average_rate == 8
    assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    data = (out / "video.mp4").read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart

    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["frame_count"] == 7 and metadata["segments"] == 2 and metadata["fps"] == 8
    assert metadata["caption_source"] == "blip" and metadata["caption"].startswith("a photography of")
    assert metadata["model"]["revision"].startswith("local-")
    assert metadata["fit"]["original_size"] == [70, 50]
    assert metadata["fit"]["crop_box"] == [10, 0, 60, 50]  # the centre square, cropped before the resize
    assert metadata["input"]["image_sha256"] == sha256(image_path.read_bytes())
    for name in names:
        if name != "metadata.json":
            assert metadata["hashes"][name] == sha256((out / name).read_bytes())
    assert set(metadata["timings"]) >= {"caption", "invert", "keyframes", "frames", "scores", "encode"}
    scores = metadata["scores"]  # the basic scores and the tiny model's own scorers' (scorers/)
    assert set(scores) == {"structure", "structure_last", "mean_step", "worst_step", "worst_over_mean"} | {
        "empty_frames",
        "clip_t",
        "clip_f",
        "dino_structure",
    }
    assert scores["worst_step"] >= scores["mean_step"] > 0

    # the source frame is the first frame of the video (compared on luma: yuv420p halves chroma)
    def luma(rgb):
        return np.asarray(rgb, dtype=np.float64) @ [0.299, 0.587, 0.114]

    source = luma(PIL.Image.open(out / "source.png").convert("RGB"))
    assert np.abs(source - luma(frames[0])).mean() < 4
    assert np.abs(source - luma(frames[0])).mean() < np.abs(source - luma(frames[-1])).mean()


def test_same_seed_same_frames_other_seed_other_frames(tiny_model_dir, image_path, tmp_path):
    def keyframe_hashes(seed, name):
        args = ["--image", str(image_path), "--caption", "a photo", "--prompt", "a dog", "--seed", str(seed)]
        assert generate(tiny_model_dir, tmp_path / name, *args) == 0
        hashes = json.loads((tmp_path / name / "metadata.json").read_text())["hashes"]
        return [hashes[k] for k in sorted(hashes) if k.startswith("keyframes/")], hashes["source.png"]

    (first, source), (again, _), (other, other_source) = (
        keyframe_hashes(1, "a"),
        keyframe_hashes(1, "b"),
        keyframe_hashes(2, "c"),
    )
    assert first == again
    assert all(x != y for x, y in zip(first, other, strict=True))
    assert source == other_source  # the video starts on the input itself, whatever the seed


def test_synthetic_mode_makes_a_video(tiny_model_dir, tmp_path):
    out = tmp_path / "synthetic"
    assert generate(tiny_model_dir, out, "--source-prompt", "a red car", "--prompt", "a blue car") == 0
    frames, _ = decode(out / "video.mp4")
    assert len(frames) == 1 + 3
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["mode"] == "synthetic" and metadata["caption"] == "a red car"
    assert metadata["xa_guidance_used"] == 0.15 and metadata["fit"] is None


def test_the_edit_options_reach_the_video_and_its_metadata(tiny_model_dir, image_path, tmp_path):
    out = tmp_path / "edited"
    options = ["--direction", "sentences", "--direction-template", "a photo of a {}", "--xa-until", "0.5"]
    options += ["--xa-schedule", "linear", "--inbetween", "latent", "--negative", "empty"]
    options += ["--negative-until", "0.5", "--negative-from", "0.25"]
    options += ["--caption", "a photo of a cat", "--prompt", "a photo of a dog"]
    assert generate(tiny_model_dir, out, "--image", str(image_path), *options) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    params, given = metadata["params"], metadata["params_from"]
    assert (params["direction"], params["direction_templates"]) == ("sentences", ["a photo of a {}"])
    assert (params["xa_until"], params["xa_schedule"], params["inbetween"]) == (0.5, "linear", "latent")
    assert (params["negative"], params["negative_from"], params["negative_until"]) == ("empty", 0.25, 0.5)
    assert given["direction"] == given["negative"] == "given"


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt", "directory"])
def test_bad_image_is_one_line_error(tiny_model_dir, tmp_path, capsys, kind):
    path = tmp_path / "bad.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    elif kind == "directory":
        path.mkdir()
    code = generate(tiny_model_dir, tmp_path / "out", "--image", str(path), "--prompt", "a dog")
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err or "decode" in err or "empty" in err
    assert not (tmp_path / "out").exists()


def test_missing_model_offline_is_one_line_error(image_path, tmp_path, capsys):
    code = main(
        [
            "generate",
            "--model",
            "nobody/no-such-model",
            "--image",
            str(image_path),
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "nobody/no-such-model" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--image", "x.png"],  # no --prompt
        ["--image", "x.png", "--source-prompt", "y", "--prompt", "z"],  # both sources
        ["--image", "x.png", "--prompt", "z", "--keyframes", "0"],
        ["--image", "x.png", "--prompt", "z", "--keyframes", "4", "--frames", "3"],
        ["--image", "x.png", "--prompt", "z", "--fps", "500"],
        ["--image", "x.png", "--prompt", " "],
        ["--image", "x.png", "--prompt", "z", "--xa-guidance", "nan"],
        ["--image", "x.png", "--prompt", "z", "--xa-until", "0"],
        ["--image", "x.png", "--prompt", "z", "--direction-template", "no placeholder"],
        ["--image", "x.png", "--prompt", "z", "--negative", "none"],
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as raised:
        code = main(["generate", "--out", str(tmp_path / "o"), *args])
        raise SystemExit(code)
    assert raised.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_console_script_reports_errors_without_traceback(tmp_path, tiny_model_dir):
    """The installed `stillmotion` entry point, as a user runs it."""
    exe = Path(sys.executable).parent / "stillmotion"
    result = subprocess.run(
        [
            str(exe),
            "generate",
            "--image",
            str(tmp_path / "nope.png"),
            "--prompt",
            "a",
            "--out",
            str(tmp_path / "o"),
            "--caption",  # a captioner is checked before the image (the default model has none here)
            "a photo",
            "--model",
            str(tiny_model_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"stillmotion generate: error: image not found: {tmp_path / 'nope.png'}"
    ]


def test_a_real_mode_video_starts_on_the_fitted_input(tiny_model_dir, image_path, tmp_path, sd):
    import torch

    from stillmotion.models import fit_image, open_image
    from stillmotion.models.images import pil_to_tensor
    from stillmotion.models.insertion import decode_latents
    from stillmotion.models.inversion import encode_latents

    out = tmp_path / "video"
    assert (
        generate(tiny_model_dir, out, "--image", str(image_path), "--caption", "a photo", "--prompt", "a dog")
        == 0
    )
    fitted, _ = fit_image(open_image(image_path.read_bytes(), str(image_path)), sd.image_size)
    with torch.no_grad():  # the input through the VAE alone, not the reference pass's reconstruction
        expected = decode_latents(sd.vae, encode_latents(sd.vae, pil_to_tensor(fitted)))
    expected = ((expected.clamp(-1, 1) + 1) * 127.5).round()[0].permute(1, 2, 0).numpy()
    source = np.asarray(PIL.Image.open(out / "source.png").convert("RGB")).astype(np.float64)
    assert np.abs(source - expected).max() <= 1
