"""Write manifests/examples/manifest.parquet: three real-image rows, one synthetic row, one extra column.

    python manifests/examples/make_manifest.py
    stillmotion validate manifests/examples/manifest.parquet

Image paths are relative, so they resolve against this folder wherever the manifest is copied with them.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = [
    {
        "video_id": "lighthouse",
        "image": "images/lighthouse.png",
        "prompts": ["a lighthouse at night"],
        "keyframes": 3,
        "frames": 6,
        "steps": 10,
        "split": "train",
    },
    {
        "video_id": "apple-seasons",
        "image": "images/apple.jpg",
        "caption": "a photo of a red apple on a table",
        # a multi-prompt row: one segment per target prompt
        "prompts": ["a photo of a green apple on a table", "a photo of a golden apple on a table"],
        "keyframes": 2,
        "frames": 4,
        "steps": 10,
        "split": "train",
    },
    {
        "video_id": "house",
        "image": "images/house.png",
        "prompts": ["a drawing of a house in snow"],
        "keyframes": 2,
        "frames": 4,
        "steps": 10,
        "split": "val",
    },
    {
        "video_id": "red-car",
        "source_prompt": "a photo of a red car",  # synthetic: no image
        "prompts": ["a photo of a blue car"],
        "keyframes": 2,
        "frames": 4,
        "steps": 10,
        "split": "val",
    },
]

SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("image", pa.string()),
        ("source_prompt", pa.string()),
        ("caption", pa.string()),
        ("prompts", pa.list_(pa.string())),
        ("keyframes", pa.int64()),
        ("frames", pa.int64()),
        ("steps", pa.int64()),
        ("split", pa.string()),  # not a manifest column: carried through to results.parquet
    ]
)


def main() -> None:
    path = Path(__file__).resolve().parent / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS, schema=SCHEMA), path)
    print(f"wrote {path} ({len(ROWS)} rows)")


if __name__ == "__main__":
    main()
