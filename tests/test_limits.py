"""Bounds on everything a row can ask for (stillmotion.limits, DESIGN 4): a row past one fails alone,
naming its column and the limit, in `validate` and in the run; a row on a bound is accepted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stillmotion.cli import main
from stillmotion.limits import (
    MAX_CANDIDATES,
    MAX_FPS,
    MAX_FRAMES,
    MAX_INJECT_LAYERS,
    MAX_KEYFRAMES,
    MAX_PROMPTS,
    MAX_STEPS,
    MAX_TEMPLATES,
    MAX_TEXT_CHARS,
    MAX_VIDEO_FRAMES,
    MAX_VIDEO_KEYFRAMES,
)
from stillmotion.manifests import MANIFEST_COLUMNS, iter_manifest

GOOD = {"video_id": "good", "source_prompt": "a photo of a cat", "prompts": ["a photo of a dog"]}
TINY = {"steps": 1, "keyframes": 1, "frames": 1}  # the cheapest video the tiny model makes
LONG = "x" * (MAX_TEXT_CHARS + 1)
LAYER = "up_blocks.1.resnets.1"


def write_manifest(path: Path, rows: list[dict]) -> str:
    names = list(dict.fromkeys(name for row in rows for name in row))
    schema = pa.schema([(name, MANIFEST_COLUMNS[name]) for name in names])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def prompts(count: int) -> list[str]:
    return [f"a photo of a dog, take {i}" for i in range(count)]


# changes to GOOD -> (column, the limit's words in the reason)
PAST_A_BOUND = {
    "keyframes": ({"keyframes": MAX_KEYFRAMES + 1}, "keyframes", f"1..{MAX_KEYFRAMES}"),
    "frames": ({"frames": MAX_FRAMES + 1}, "frames", f"..{MAX_FRAMES}"),
    "prompts": ({"prompts": prompts(MAX_PROMPTS + 1)}, "prompts", f"at most {MAX_PROMPTS} prompts"),
    "prompt length": ({"prompts": ["a dog", LONG]}, "prompts", f"longer than {MAX_TEXT_CHARS} characters"),
    "caption length": (
        {"source_prompt": None, "image": "x.png", "caption": LONG},
        "caption",
        f"longer than {MAX_TEXT_CHARS} characters",
    ),
    "source_prompt length": ({"source_prompt": LONG}, "source_prompt", f"longer than {MAX_TEXT_CHARS}"),
    "frames per video": (
        {"keyframes": 1, "frames": MAX_FRAMES, "prompts": prompts(MAX_VIDEO_FRAMES // MAX_FRAMES + 1)},
        "frames",
        f"the {MAX_VIDEO_FRAMES} frames a video may have",
    ),
    "key frames per video": (
        {"keyframes": 9, "frames": 9, "prompts": prompts(MAX_PROMPTS)},  # 288 key frames, 289 frames
        "keyframes",
        f"the {MAX_VIDEO_KEYFRAMES} key frames a video may have",
    ),
    "steps": ({"steps": MAX_STEPS + 1}, "steps", f"1..{MAX_STEPS}"),
    "fps": ({"fps": MAX_FPS + 1}, "fps", f"..{MAX_FPS}"),
    "candidates": ({"candidates": MAX_CANDIDATES + 1}, "candidates", f"1..{MAX_CANDIDATES}"),
    "templates": (
        {"direction_templates": ["a photo of a {}"] * (MAX_TEMPLATES + 1)},
        "direction_templates",
        f"at most {MAX_TEMPLATES}",
    ),
    "template length": (
        {"direction_templates": ["a photo of a {}" + LONG]},
        "direction_templates",
        f"longer than {MAX_TEXT_CHARS} characters",
    ),
    "inject_layers": (
        {"inject_layers": [LAYER] * (MAX_INJECT_LAYERS + 1)},
        "inject_layers",
        f"at most {MAX_INJECT_LAYERS}",
    ),
}


@pytest.mark.parametrize("changes, column, limit", PAST_A_BOUND.values(), ids=PAST_A_BOUND.keys())
def test_a_row_past_a_bound_fails_alone_naming_its_column_and_limit(tmp_path, changes, column, limit):
    bad = {**GOOD, "video_id": "bad", **changes}
    rows = list(
        iter_manifest(write_manifest(tmp_path / "m.parquet", [GOOD, bad, {**GOOD, "video_id": "g2"}]))
    )
    assert [row.ok for row in rows] == [True, False, True]
    assert (rows[1].error.column, rows[1].error.video_id) == (column, "bad")
    assert limit in rows[1].error.reason
    assert not rows[1].error.reason.startswith(f"{column}:")  # the column is named once
    assert len(str(rows[1].error)) < 200  # a 2001-character text is not echoed


ON_A_BOUND = {
    "keyframes": {"keyframes": MAX_KEYFRAMES},
    "frames": {"frames": MAX_FRAMES},
    "prompts": {"prompts": prompts(MAX_PROMPTS)},
    "text length": {"prompts": ["x" * MAX_TEXT_CHARS], "source_prompt": "y" * MAX_TEXT_CHARS},
    "frames per video": {"keyframes": 1, "frames": (MAX_VIDEO_FRAMES - 1) // 3, "prompts": prompts(3)},
    "key frames per video": {"keyframes": MAX_VIDEO_KEYFRAMES // 4, "prompts": prompts(4)},
    "steps": {"steps": MAX_STEPS},
    "fps": {"fps": MAX_FPS},
    "candidates": {"candidates": MAX_CANDIDATES},
    "templates": {"direction_templates": ["a photo of a {}"] * MAX_TEMPLATES},
    "inject_layers": {"inject_layers": [LAYER] * MAX_INJECT_LAYERS},
}


@pytest.mark.parametrize("changes", ON_A_BOUND.values(), ids=ON_A_BOUND.keys())
def test_a_row_on_a_bound_is_accepted(tmp_path, changes):
    (row,) = iter_manifest(write_manifest(tmp_path / "m.parquet", [{**GOOD, **changes}]))
    assert row.ok, row.error


# ----------------------------------------------------------------------------- through the command line


def write_image(path: Path, size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)


@pytest.fixture
def runaway_manifest(tmp_path) -> str:
    """Five rows that would each exhaust a worker (issue 28), then one good row."""
    write_image(tmp_path / "thin.png", (1, 40000))  # a few hundred bytes
    write_image(tmp_path / "good.png", (56, 40))
    image_row = {"image": "good.png", "prompts": ["a dog"], "caption": "a photo", **TINY}
    rows = [
        {**image_row, "video_id": "frames", "frames": 100_000},
        {**image_row, "video_id": "keyframes", "keyframes": 5000, "frames": None},
        {**image_row, "video_id": "prompts", "prompts": prompts(40)},
        {**image_row, "video_id": "huge-prompt", "prompts": ["a dog " * 1_750_000]},  # 10.5 MB
        {**image_row, "video_id": "thin", "image": "thin.png"},
        {**image_row, "video_id": "good"},
    ]
    return write_manifest(tmp_path / "manifest.parquet", rows)


# row -> (video_id, column, the limit in its reason)
RUNAWAY = [
    ("frames", "frames", f"frames must be in keyframes..{MAX_FRAMES}"),
    ("keyframes", "keyframes", f"keyframes must be in 1..{MAX_KEYFRAMES}"),
    ("prompts", "prompts", f"at most {MAX_PROMPTS} prompts per video, got 40"),
    ("huge-prompt", "prompts", f"longer than {MAX_TEXT_CHARS} characters (10500000)"),
    ("thin", "image", "is 1x40000 px: aspect ratio 40000:1 is over the limit of 8:1"),
]


def validation_lines(manifest: str, capsys) -> list[str]:
    capsys.readouterr()
    assert main(["validate", manifest]) == 1
    return capsys.readouterr().out.splitlines()


def test_validate_fails_each_runaway_row_alone_with_its_column_and_limit(runaway_manifest, capsys):
    lines = validation_lines(runaway_manifest, capsys)
    assert len(lines) == len(RUNAWAY) + 1 and lines[-1] == f"6 rows, {len(RUNAWAY)} invalid"
    for index, (line, (video_id, column, limit)) in enumerate(zip(lines, RUNAWAY, strict=False)):
        assert line.startswith(f"row {index} (video_id={video_id}): {column}: "), line
        assert limit in line, line


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_run_fails_the_runaway_rows_with_the_validate_reason_and_makes_the_good_one(
    prefect_server, tiny_model_dir, runaway_manifest, tmp_path, capsys
):
    reasons = [line.split(": ", 1)[1] for line in validation_lines(runaway_manifest, capsys)[:-1]]
    output = tmp_path / "out"
    run = ["run", runaway_manifest, "--output", str(output), "--model", str(tiny_model_dir), "--no-progress"]
    assert main(run) == 3  # some rows failed
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert [row["video_id"] for row in results] == [video_id for video_id, _, _ in RUNAWAY] + ["good"]
    assert [row["status"] for row in results] == ["failed"] * len(RUNAWAY) + ["ok"]
    for row, reason, (_, column, limit) in zip(results, reasons, RUNAWAY, strict=False):
        # validate says "row N (video_id=x): column: reason"; the run's error is "column: reason",
        # or, for an image refused by the source stage, the reason (which names the image) alone
        assert row["error"] in (reason, reason.removeprefix(f"{column}: ")), (row["error"], reason)
        assert limit in row["error"]
    assert (output / "good" / "metadata.json").exists()
    assert not (output / "frames").exists() and not (output / "thin").exists()


def test_the_readme_lists_every_limit_with_its_value():
    import stillmotion.limits as limits

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = {}
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| `M") and len(cells) == 3:
            names, values = cells[0].replace("`", "").split(", "), cells[1].split(", ")
            listed.update(
                {name: float(value.replace(",", "")) for name, value in zip(names, values, strict=True)}
            )
    constants = {name: value for name, value in vars(limits).items() if name.isupper()}
    assert listed == constants
