"""report.html: a stable sample of previews, and the page as a real headless browser (Chromium) shows it."""

import os
import shutil
import subprocess

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.testing.utilities import prefect_test_harness

from stillmotion.cli import main
from stillmotion.report import FAILED_SHOWN, SAMPLE, RunReport, render

CHROMIUM_FLAGS = [  # no network here: without these Chromium keeps trying to reach Google's hosts
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def record(row: int, status: str = "ok") -> dict:
    return {
        "row": row,
        "video_id": f"v{row}",
        "status": status,
        "error": "image not found" if status == "failed" else None,
        "cached": False,
        "score_structure": 0.5,
    }


def test_a_large_run_shows_a_stable_sample_in_manifest_order():
    forward, backward = RunReport(), RunReport()
    for row in range(1000):
        forward.add(record(row), ["a cat"], {"keyframes": 1.0})
    for row in reversed(range(1000)):
        backward.add(record(row), ["a cat"], {"keyframes": 1.0})
    shown = [item[0] for item in forward.shown]
    assert len(shown) == SAMPLE and shown == sorted(shown)
    assert shown == [item[0] for item in backward.shown]  # the same rows whatever order they finish in
    assert forward.stage_seconds["keyframes"] == 1000.0 and forward.finished == 1000

    small = RunReport()
    for row in range(5):
        small.add(record(row, "failed" if row == 2 else "ok"), ["a cat"], None)
    assert [item[0] for item in small.shown] == [0, 1, 3, 4]  # every finished row of a small run
    assert small.reasons == {"image not found": 1} and small.failed == [(2, "v2", "image not found")]


def test_failed_rows_are_listed_in_manifest_order_whatever_order_they_finish_in():
    report = RunReport()
    for row in [*range(FAILED_SHOWN + 50, FAILED_SHOWN + 100), *reversed(range(FAILED_SHOWN + 50))]:
        report.add(record(row, "failed"), None, None)
    assert [row for row, *_ in report.failed] == list(range(FAILED_SHOWN))  # the first rows, in order
    assert report.reasons == {"image not found": FAILED_SHOWN + 100}
    summary = {"rows": 3, "done": 0, "cached": 0, "failed": FAILED_SHOWN + 100, "seconds": 1.0}
    page = render(report, summary, {}, {})
    listed = [int(cell.split("</td>")[0]) for cell in page.split("<tr><td>")[1:] if "</td><td>v" in cell]
    assert listed == list(range(FAILED_SHOWN))


def test_a_run_that_made_nothing_shows_the_videos_own_stage_times():
    report = RunReport()
    for row in range(3):
        report.add({**record(row), "cached": True}, ["a cat"], None)  # found complete: no timings of its own
    summary = {"rows": 3, "done": 0, "cached": 3, "failed": 0, "seconds": 2.1}
    empty = render(report, summary, {}, {})
    assert (
        "Time per stage (videos made by this run)" in empty
        and "2.1 s wall, no video made by this run" in empty
    )
    made_before = {"v0": {"keyframes": 3.0, "invert": 1.0}, "v1": {"keyframes": 5.0}}
    page = render(report, summary, {}, {}, made_before)
    assert "Time per stage (2 videos shown, found complete: the times they took when made)" in page
    assert "<tr><td>keyframes</td><td>2</td><td>8.0</td><td>4.00</td></tr>" in page
    assert "<tr><td>invert</td><td>1</td><td>1.0</td><td>1.00</td></tr>" in page


def chromium() -> str:
    found = (
        os.environ.get("STILLMOTION_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if not found:
        pytest.fail(
            "the report test needs a headless Chromium: install Debian's package (apt-get install chromium; "
            "`make test` does) or set STILLMOTION_CHROMIUM to a Chromium binary"
        )
    return found


def screenshot(page, png, profile) -> np.ndarray:
    subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1200,1000",
            f"--screenshot={png}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return np.asarray(PIL.Image.open(png).convert("HSV"))


def colourful(image: np.ndarray) -> float:
    """The share of the screenshot in saturated colour: the previews (the page itself is grey on white)."""
    return float(((image[..., 1] > 40) & (image[..., 2] > 40)).mean())


def test_the_report_shows_the_grid_of_previews_in_a_headless_browser(tmp_path, tiny_model_dir):
    rows = 4
    (tmp_path / "in").mkdir()
    for i in range(rows - 1):
        rng = np.random.default_rng(i)
        PIL.Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            tmp_path / "in" / f"{i}.png"
        )
    table = pa.table(
        {
            "video_id": [f"v{i}" for i in range(rows)],
            "image": [f"{i}.png" for i in range(rows)],  # the last one is missing
            "caption": ["a photo"] * rows,
            "prompts": [["a red circle", "a blue circle"]] * rows,
            "steps": [3] * rows,
            "keyframes": [2] * rows,
            "frames": [2] * rows,
        }
    )
    pq.write_table(table, tmp_path / "in" / "manifest.parquet")
    output = tmp_path / "out"
    with prefect_test_harness(server_startup_timeout=120):
        args = ["run", str(tmp_path / "in" / "manifest.parquet"), "--output", str(output)]
        assert main([*args, "--model", str(tiny_model_dir), "--no-progress"]) == 3

    page = (output / "report.html").read_text()
    assert page.count('<img src="data:image/jpeg;base64,') == rows - 1  # embedded: no network, no files
    assert 'href="v0/video.mp4"' in page and "a red circle → a blue circle" in page
    assert "Failed rows (1)" in page and "3.png" in page  # the failed row with its reason

    shown = screenshot(output / "report.html", tmp_path / "report.png", tmp_path / "profile")
    # the same page without its grid: what an empty or broken page would look like
    start, end = page.index("<div class=grid>"), page.index("</div>\n", page.index("<div class=grid>"))
    (tmp_path / "empty.html").write_text(page[:start] + page[end:])
    empty = screenshot(tmp_path / "empty.html", tmp_path / "empty.png", tmp_path / "profile")
    assert colourful(empty) < 0.002
    assert colourful(shown) > 0.02  # the previews are drawn
