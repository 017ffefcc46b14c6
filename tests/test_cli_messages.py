"""What `stillmotion` tells a new user (issue 31): a run's start-up steps on stderr, one line each; the
errors that stop a run arrive before any server starts and name the real fix; what cannot mean anything
(a misspelt column, a prompt the tokenizer does not know, a new bucket) is said; the summary counts the
process's whole wall time."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services import moto_s3
from stillmotion.cli import main
from stillmotion.cli.startup import unknown_storage_options
from stillmotion.storage import STORAGE_OPTIONS_ENV

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "manifests" / "examples" / "manifest.parquet"
EXE = Path(sys.executable).parent / "stillmotion"

# a run in a process of its own, as the `stillmotion` command counts time: from the process's start
PROBE = """
import sys, time
from stillmotion.cli import main, process_started
status = main(sys.argv[1:])
heavy = [name for name in ("torch", "diffusers", "transformers") if name in sys.modules]
seconds = round(time.monotonic() - process_started(), 2)
print("status", status, "seconds", seconds, "heavy", ",".join(heavy) or "-")
"""


@pytest.fixture(scope="module")
def uncaptioned_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model without its captioner/ (as models/toyworld): offline, image rows need a caption."""
    folder = tmp_path_factory.mktemp("no-captioner") / "model"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("captioner"))
    return folder


def image_manifest(folder: Path, rows: list[dict], image: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if image:
        PIL.Image.new("RGB", (40, 40), (200, 40, 40)).save(folder / "red.png")
    pq.write_table(pa.Table.from_pylist(rows), folder / "manifest.parquet")
    return folder / "manifest.parquet"


@pytest.mark.skipif(sys.platform == "darwin", reason="MPS may exist there")
@pytest.mark.parametrize(
    "options, message",
    [
        (["--model", "/nonexistent"], "model folder /nonexistent does not exist"),
        (["--device", "mps"], "device 'mps' requested but MPS is not available on this machine"),
    ],
    ids=["missing-model", "mps"],
)
def test_a_run_that_cannot_start_says_so_in_seconds_without_torch(tiny_model_dir, tmp_path, options, message):
    args = ["run", str(EXAMPLE), "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir), *options]
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    status, _, seconds, _, heavy = probe.stdout.split()[-5:]
    assert (status, heavy) == ("1", "-"), (probe.stdout, probe.stderr)  # no torch: the check needs none
    lines = probe.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stillmotion run: error: {message}"), probe.stderr
    assert "Prefect server" not in probe.stderr and "loading torch" not in probe.stderr
    assert float(seconds) < 3.0, f"answered in {seconds} s from the process's start"


def test_an_unknown_device_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["run", str(EXAMPLE), "--output", "out", "--device", "gpu"])
    assert exit.value.code == 2
    assert "unknown device 'gpu': use auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err


def test_training_a_unet_on_without_its_vae_is_a_usage_error(tmp_path, capsys):
    assert main(["train-toy", str(tmp_path / "toy"), "--unet-from", str(REPO / "models" / "toyworld")]) == 2
    assert "--unet-from needs --vae-from" in capsys.readouterr().err
    assert not (tmp_path / "toy").exists()  # said before anything was drawn or written
    # a small share that leaves out one size is refused the same way, by name
    assert main(["train-toy", str(tmp_path / "toy"), "--small", "1"]) == 2
    assert "small must be in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "toy").exists()


@pytest.mark.parametrize("below", ["", "/sub"], ids=["the-file", "under-a-file"])
def test_an_output_that_is_a_file_names_the_fix(tiny_model_dir, tmp_path, capsys, below):
    (tmp_path / "afile").write_text("not a folder")
    output = f"{tmp_path / 'afile'}{below}"
    assert main(["run", str(EXAMPLE), "--output", output, "--model", str(tiny_model_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Errno" not in err, err
    assert f"{tmp_path / 'afile'} is a file, not a folder: name a folder" in err


def test_a_bad_storage_option_names_the_key_and_the_protocol(capsys, monkeypatch):
    monkeypatch.delenv(STORAGE_OPTIONS_ENV, raising=False)
    options = json.dumps({"endpoint_url": "http://127.0.0.1:9", "bogus": 1})
    assert main(["run", str(EXAMPLE), "--output", "s3://bucket/run", "--storage-options", options]) == 2
    err = capsys.readouterr().err
    assert "--storage-options: s3:// storage (s3fs) has no option 'bogus'" in err and "AioSession" not in err
    assert STORAGE_OPTIONS_ENV not in os.environ  # refused before anything was set
    good = {
        "endpoint_url": "x",
        "key": "k",
        "secret": "s",
        "client_kwargs": {},
        "profile": "p",
        "anon": False,
    }
    assert unknown_storage_options("s3", good) == [] and unknown_storage_options("gcs", {"bogus": 1}) == []


def test_a_new_bucket_is_said_once(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(STORAGE_OPTIONS_ENV, raising=False)
    # a row that fails on its own (a blank prompt): the run writes its results without Prefect or a model
    manifest = image_manifest(
        tmp_path, [{"video_id": "a", "source_prompt": "x", "prompts": [""]}], image=False
    )
    with moto_s3("existing", "AKIASTILLMOTIONMSG00", "secret-msg") as (fs, endpoint):
        options = json.dumps(
            {"endpoint_url": endpoint, "key": "AKIASTILLMOTIONMSG00", "secret": "secret-msg"}
        )
        args = ["run", str(manifest), "--storage-options", options, "--no-progress"]
        assert main([*args, "--output", "s3://fresh/run"]) == 3
        assert (
            "stillmotion run: creating the bucket s3://fresh (it does not exist yet)\n"
            in capsys.readouterr().err
        )
        assert fs.exists("fresh/run/results.parquet")
        assert main([*args, "--output", "s3://fresh/run"]) == 3
        assert main([*args, "--output", "s3://existing/run"]) == 3
        assert "creating the bucket" not in capsys.readouterr().err


def test_image_rows_without_a_caption_or_a_captioner_stop_before_any_server(
    uncaptioned_model, tmp_path, capsys
):
    rows = [{"video_id": f"v{i}", "image": "red.png", "prompts": ["a blue circle"]} for i in range(2)]
    manifest = image_manifest(tmp_path / "in", rows)
    started = time.monotonic()
    assert (
        main(["run", str(manifest), "--output", str(tmp_path / "out"), "--model", str(uncaptioned_model)])
        == 1
    )
    assert time.monotonic() - started < 10  # before torch, Prefect's server or any model (seconds at most)
    err = capsys.readouterr().err
    assert (
        err.startswith("stillmotion run: error: every row is an image without a caption")
        and err.count("\n") == 1
    )
    assert "has no captioner/" in err and "give those rows a `caption` column" in err
    assert "pass --model" not in err  # the model was a local folder: that was never the fix

    out = str(tmp_path / "video")
    args = ["generate", "--image", str(tmp_path / "in" / "red.png"), "--prompt", "a dog", "--out", out]
    assert main([*args, "--model", str(uncaptioned_model)]) == 1
    err = capsys.readouterr().err
    assert "cannot caption --image" in err and err.rstrip().endswith("pass --caption TEXT")


def test_validate_says_a_column_wide_problem_once_and_warns_of_misspelt_columns(tmp_path, capsys):
    rows = [
        {"video_id": f"v{i}", "source_prompt": "a red circle", "prompts": ["a blue circle"], "seed": str(i)}
        | {"Frames": 4, "fsp": 3, "split": "train"}
        for i in range(14)
    ]
    assert main(["validate", str(image_manifest(tmp_path, rows, image=False))]) == 1
    lines = capsys.readouterr().out.splitlines()
    carried = "is not a manifest column (carried to the results as is, the option left at its default)"
    assert lines == [
        f"warning: column 'Frames' {carried}: did you mean 'frames'?",
        f"warning: column 'fsp' {carried}: did you mean 'fps'?",
        "seed: column has type string, expected an integer: 14 rows fail for it",
        "14 rows, 14 invalid",
    ]


def test_prompts_are_counted_from_1_by_generate_and_by_manifests(tmp_path, capsys):
    args = ["generate", "--source-prompt", "a red circle", "--prompt", "a blue circle", "--prompt", ""]
    assert main([*args, "--out", str(tmp_path / "video")]) == 2
    assert "prompt 2 of the schedule is blank" in capsys.readouterr().err
    rows = [{"video_id": "v", "source_prompt": "a red circle", "prompts": ["", "a blue circle"]}]
    assert main(["validate", str(image_manifest(tmp_path, rows, image=False))]) == 1
    assert capsys.readouterr().out.splitlines()[0] == "row 0 (video_id=v): prompts: prompt 1 is blank"


def test_serve_output_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "where videos and results go" in " ".join(capsys.readouterr().out.split())


def test_a_prompt_the_tokenizer_cannot_read_is_noted():
    from transformers import CLIPTokenizer

    from stillmotion.models.method import edit_notes

    tokenizer = CLIPTokenizer.from_pretrained(REPO / "models" / "toyworld" / "tokenizer")  # ten words
    caption = "a big red circle"
    assert edit_notes(tokenizer, caption, ["a big blue circle", "a small blue square"]) == []
    [unknown] = edit_notes(tokenizer, caption, ["a purple elephant"])
    assert unknown.startswith(
        "prompt 1 'a purple elephant': the model's tokenizer does not know 'purple', 'elephant'"
    )
    [same, again] = edit_notes(tokenizer, caption, ["A BIG RED CIRCLE", "a big red circle"])
    assert "reads as the caption" in same and "segment 1 is zero" in same
    assert again.startswith("prompt 2 'a big red circle' reads as prompt 1")


def test_a_run_says_each_start_up_step_and_counts_its_whole_wall_time(uncaptioned_model, tmp_path):
    rows = [
        {
            "video_id": "synthetic",
            "source_prompt": "a red circle",
            "image": None,
            "prompts": ["a purple elephant"],
        },
        {"video_id": "uncaptioned", "source_prompt": None, "image": "red.png", "prompts": ["a blue circle"]},
    ]
    rows = [row | {"steps": 1, "keyframes": 1, "frames": 1, "fsp": 8} for row in rows]
    manifest = image_manifest(tmp_path / "in", rows)
    output = tmp_path / "out"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": "",
        "PYTHONUNBUFFERED": "1",  # the summary line arrives when it is printed
    }
    args = [str(EXE), "run", str(manifest), "--output", str(output), "--model", str(uncaptioned_model)]
    launched = time.monotonic()
    process = subprocess.Popen(
        [*args, "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    summary = process.stdout.readline()
    printed = time.monotonic() - launched
    _, err = process.communicate(timeout=300)
    wall = time.monotonic() - launched
    assert process.returncode == 3, err
    assert summary.startswith("2 rows: 1 made, 0 already complete, 1 failed in "), summary
    seconds = float(summary.split(" in ")[1].split(" s;")[0])
    # counted from the process's start: imports, Prefect's server and the model's load included
    assert printed - 1.5 < seconds < printed + 0.1, (seconds, printed, wall)  # /proc counts in 10 ms ticks
    print(f"summary {seconds} s, printed at {printed:.2f} s, process wall {wall:.2f} s")

    said = [
        line.removeprefix("stillmotion run: ")
        for line in err.splitlines()
        if line.startswith("stillmotion run:")
    ]
    assert said[0].startswith("warning: column 'fsp' is not a manifest column")
    assert said[1].startswith("warning: 1 image rows have no caption, and the model folder")
    assert said[1].endswith("they will fail; give those rows a `caption` column (`generate` takes --caption)")
    assert said[2:5] == [
        "loading torch and the model libraries",
        "starting the Prefect server (PREFECT_API_URL uses a running one instead)",
        "making the videos: the model loads on cpu (float32) with the first row that needs it",
    ]
    assert "stillmotion: synthetic: prompt 1 'a purple elephant': the model's tokenizer does not know" in err
    notes = json.loads((output / "synthetic" / "metadata.json").read_text())["notes"]
    assert any(
        note.startswith("prompt 1 'a purple elephant': the model's tokenizer does not know") for note in notes
    )

    # a rerun makes nothing: report.html shows the videos' own stage times instead of an empty table
    rerun = subprocess.run([*args, "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 3 and rerun.stdout.startswith("2 rows: 0 made, 1 already complete, 1 failed")
    assert "Prefect server" not in rerun.stderr
    page = (output / "report.html").read_text()
    assert "Time per stage (1 video shown, found complete: the times they took when made)" in page
    assert "<tr><td>keyframes</td><td>1</td>" in page and "no video made by this run" in page
