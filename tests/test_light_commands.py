"""The light commands stay light: `validate`, `--help` and argument errors import no model library
(torch, diffusers, transformers) and no Prefect, so they answer in well under a second (the figures
are in benchmarks/RESULTS.md; this checks what makes them fast, not a time)."""

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "diffusers", "transformers", "prefect")
EXAMPLE = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "manifest.parquet"

PROBE = """
import sys
from stillmotion.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
heavy = [name for name in {heavy!r} if name in sys.modules]
print("status", status, "heavy", ",".join(heavy) or "-")
"""


@pytest.mark.parametrize(
    "args, status",
    [
        (["validate", str(EXAMPLE)], 0),
        (["validate", "/nowhere/manifest.parquet"], 1),
        (["run", "--help"], 0),
        (["run"], 2),  # an argument error
        (["generate", "--keyframes", "0", "--prompt", "a dog", "--out", "x"], 2),
        (["run", "m.parquet", "--output", "o", "--gpu-slots", "sometimes"], 2),
        (["gpu-slots", "--device"], 2),
    ],
    ids=["validate", "validate-missing", "help", "argument-error", "bad-option", "bad-slots", "slots-usage"],
)
def test_light_commands_import_no_model_library_nor_prefect(args, status):
    probe = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, timeout=120
    )
    last = probe.stdout.strip().splitlines()[-1]
    assert last == f"status {status} heavy -", (probe.stdout, probe.stderr)
