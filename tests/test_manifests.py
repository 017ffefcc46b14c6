"""Manifest reading and validation (DESIGN 4): bad rows fail alone, good rows become requests."""

import io
import math
import uuid
from pathlib import Path

import fsspec
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stillmotion.manifests import (
    MANIFEST_COLUMNS,
    ManifestError,
    RowError,
    default_seed,
    iter_manifest,
    print_validation,
    resolve_image,
    validate_manifest,
)
from stillmotion.manifests.schema import misspelt_columns

EXAMPLE = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "manifest.parquet"
GOOD = {"video_id": "good", "source_prompt": "a photo of a cat", "prompts": ["a photo of a dog"]}
GOOD_2 = {"video_id": "good-2", "source_prompt": "a photo of a cat", "prompts": ["a photo of a fox"]}


def write_manifest(url: str, rows: list[dict], types: dict[str, pa.DataType] | None = None) -> str:
    """Write rows as Parquet; known columns get their canonical type unless `types` overrides it."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    kinds = {**MANIFEST_COLUMNS, **(types or {})}
    schema = pa.schema([(name, kinds.get(name, pa.string())) for name in names])
    table = pa.Table.from_pylist(rows, schema=schema)
    with fsspec.open(url, "wb") as handle:
        pq.write_table(table, handle)
    return url


def png_bytes(size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def memory_root():
    """A fresh memory:// folder, removed afterwards."""
    root = f"memory://manifests-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def read_rows(url: str, **kwargs):
    return list(iter_manifest(url, **kwargs))


def test_example_manifest_is_valid_and_fully_decodable():
    rows = read_rows(str(EXAMPLE))
    assert [row.video_id for row in rows] == ["lighthouse", "apple-seasons", "house", "red-car"]
    assert all(row.ok for row in rows), [str(row.error) for row in rows if row.error]
    apple = rows[1].request
    assert len(apple.prompts) == 2 and apple.caption == "a photo of a red apple on a table"
    assert apple.image == str(EXAMPLE.parent / "images" / "apple.jpg")
    assert rows[0].request.params.keyframes == 3 and rows[0].request.params.frames_per_segment == 6
    assert rows[3].request.synthetic and rows[3].request.image is None
    assert [row.extra for row in rows] == [{"split": s} for s in ("train", "train", "val", "val")]
    assert list(validate_manifest(str(EXAMPLE))) == []


def test_row_error_reads_as_one_line():
    error = RowError(3, "abc", "image", "image not found:\n /x/y.png")
    assert str(error) == "row 3 (video_id=abc): image: image not found: /x/y.png"
    assert str(RowError(0, "a b", "video_id", "bad")) == "row 0 (video_id='a b'): video_id: bad"


BAD_ROWS = {
    "empty prompt list": ({"prompts": []}, "prompts", "empty"),
    "missing prompts": ({"prompts": None}, "prompts", "missing"),
    "blank prompt entry": ({"prompts": ["a dog", "  "]}, "prompts", "prompt 2 is blank"),  # counted from 1
    "blank first prompt": ({"prompts": ["", "a dog"]}, "prompts", "prompt 1 is blank"),
    "both image and source": ({"image": "x.png"}, "image", "not both"),
    "neither image nor source": ({"source_prompt": None}, "image", "both are missing"),
    "blank source prompt": ({"source_prompt": " "}, "source_prompt", "blank"),
    "fps 0": ({"fps": 0}, "fps", "1..120"),
    "fps 121": ({"fps": 121}, "fps", "1..120"),
    "frames below keyframes": ({"keyframes": 4, "frames": 3}, "frames", "must be in keyframes..480"),
    "keyframes 0": ({"keyframes": 0}, "keyframes", "must be in 1..64"),
    "steps 0": ({"steps": 0}, "steps", "must be in 1..1000"),
    "negative xa_guidance": ({"xa_guidance": -0.5}, "xa_guidance", "finite and >= 0"),
    "nan xa_guidance": ({"xa_guidance": math.nan}, "xa_guidance", "finite and >= 0"),
    "inf xa_guidance": ({"xa_guidance": math.inf}, "xa_guidance", "finite and >= 0"),
    "bad curve": ({"curve": "cubic"}, "curve", "'log' or 'linear'"),
    "negative seed": ({"seed": -1}, "seed", "seed must be"),
    "bad direction": ({"direction": "sideways"}, "direction", "'prompt' or 'sentences'"),
    "template without {}": ({"direction_templates": ["a photo"]}, "direction_templates", "one '{}'"),
    "xa_until 0": ({"xa_until": 0.0}, "xa_until", "(0, 1]"),
    "inject_features 2": ({"inject_features": 2.0}, "inject_features", "[0, 1]"),
    "bad xa_schedule": ({"xa_schedule": "cosine"}, "xa_schedule", "'constant' or 'linear'"),
    "bad inbetween": ({"inbetween": "pixels"}, "inbetween", "'embedding' or 'latent'"),
    "bad negative": ({"negative": "none"}, "negative", "'caption', 'empty' or 'neutral'"),
    "negative_until 2": ({"negative_until": 2.0}, "negative_until", "(0, 1]"),
    "negative_from 1": ({"negative_from": 1.0}, "negative_from", "[0, 1)"),
    "negative_from past until": ({"negative_from": 0.5, "negative_until": 0.5}, "negative_from", "below"),
}


@pytest.mark.parametrize("changes, column, reason", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_bad_row_fails_alone(memory_root, changes, column, reason):
    bad = {**GOOD, "video_id": "bad", **changes}
    rows = read_rows(write_manifest(f"{memory_root}/manifest.parquet", [GOOD, bad, GOOD_2]))
    assert [row.ok for row in rows] == [True, False, True]
    error = rows[1].error
    assert (error.row, error.video_id, error.column) == (1, "bad", column)
    assert reason in error.reason
    assert rows[1].request is None and rows[1].video_id == "bad"


@pytest.mark.parametrize("video_id", ["../etc", "a b", "", "a/b", "-lead", "x" * 129, None, "é"])
def test_unsafe_video_id_fails_alone(memory_root, video_id):
    rows = read_rows(write_manifest(f"{memory_root}/m.parquet", [GOOD, {**GOOD, "video_id": video_id}]))
    assert rows[0].ok
    assert rows[1].error.column == "video_id" and rows[1].video_id is None
    assert rows[1].error.video_id == video_id


def test_longest_safe_id_is_accepted(memory_root):
    rows = read_rows(write_manifest(f"{memory_root}/m.parquet", [{**GOOD, "video_id": "A9._-" + "x" * 123}]))
    assert rows[0].ok


def test_duplicate_ids_fail_after_the_first(memory_root):
    ids = ["a", "b", "a", "c", "a", "b"]
    rows = read_rows(write_manifest(f"{memory_root}/m.parquet", [{**GOOD, "video_id": i} for i in ids]))
    assert [row.ok for row in rows] == [True, True, False, True, False, False]
    assert [row.error.reason for row in rows if row.error] == ["duplicate of row 0"] * 2 + [
        "duplicate of row 1"
    ]
    assert {row.error.column for row in rows if row.error} == {"video_id"}


def test_non_integer_float_fails_only_its_row(memory_root):
    rows_in = [{**GOOD, "keyframes": 2.0}, {**GOOD_2, "keyframes": 2.5}, {**GOOD, "video_id": "g3"}]
    rows = read_rows(write_manifest(f"{memory_root}/m.parquet", rows_in, {"keyframes": pa.float64()}))
    assert [row.ok for row in rows] == [True, False, True]
    assert rows[0].request.params.keyframes == 2 and type(rows[0].request.params.keyframes) is int
    assert rows[1].error.column == "keyframes" and "2.5" in rows[1].error.reason
    assert rows[2].request.params.keyframes == 6  # null -> default


@pytest.mark.parametrize(
    "column, kind, value",
    [
        ("prompts", pa.string(), "a photo of a dog"),
        ("keyframes", pa.string(), "3"),
        ("caption", pa.int64(), 1),
    ],
)
def test_uncastable_column_fails_every_row(memory_root, column, kind, value):
    rows_in = [{**GOOD, column: value}, {**GOOD_2, column: value}]
    rows = read_rows(write_manifest(f"{memory_root}/m.parquet", rows_in, {column: kind}))
    assert len(rows) == 2
    assert all(row.error is not None and row.error.column == column for row in rows)
    assert "expected" in rows[0].error.reason and str(kind) in rows[0].error.reason
    assert all(row.error.column_wide for row in rows)  # `validate` says it once, with a count


def test_print_validation_says_a_column_wide_problem_once_with_its_count(tmp_path):
    rows_in = [{**GOOD, "video_id": f"v{i}", "seed": str(i)} for i in range(14)]
    rows_in += [{**GOOD, "video_id": "v0", "seed": "99"}, {**GOOD, "video_id": "a b", "seed": "1"}]
    url = write_manifest(str(tmp_path / "m.parquet"), rows_in, {"seed": pa.string()})
    out = io.StringIO()
    assert print_validation(url, out=out) == 1
    assert out.getvalue().splitlines() == [
        "row 14 (video_id=v0): video_id: duplicate of row 0",  # a row's own problem is still its line
        "row 15 (video_id='a b'): video_id: 'a b' is not a safe id: use 1-128 of A-Z a-z 0-9 . _ - starting "
        "with a letter or digit",
        "seed: column has type string, expected an integer: 14 rows fail for it",
        "16 rows, 16 invalid",
    ]


def test_misspelt_option_columns_are_warned_of_and_carried():
    names = ["Frames", "fsp", "key-frames", "prompt", "Seed", "split", "score", "notes", "url", "caption_en"]
    assert misspelt_columns(names) == [
        ("Frames", "frames"),
        ("fsp", "fps"),
        ("key-frames", "keyframes"),
        ("prompt", "prompts"),
        ("Seed", "seed"),
    ]  # extra columns that only share letters (split, score, notes, caption_en) are left alone


def test_validate_warns_of_a_misspelt_column_and_stays_valid(memory_root):
    url = write_manifest(f"{memory_root}/m.parquet", [{**GOOD, "fsp": 12}], {"fsp": pa.int64()})
    out = io.StringIO()
    assert print_validation(url, out=out) == 0
    assert out.getvalue().splitlines() == [
        "warning: column 'fsp' is not a manifest column (carried to the results as is, the option left at "
        "its default): did you mean 'fps'?",
        "1 rows, 0 invalid",
    ]
    assert read_rows(url)[0].extra == {"fsp": 12}


def test_safe_casts_are_accepted(memory_root):
    row = {**GOOD, "keyframes": 3, "frames": 9.0, "fps": 12, "seed": 7, "steps": 4, "xa_guidance": 0.25}
    kinds = {
        "keyframes": pa.int32(),
        "frames": pa.float64(),
        "fps": pa.uint8(),
        "seed": pa.int16(),
        "steps": pa.uint64(),
        "xa_guidance": pa.float32(),
        "prompts": pa.large_list(pa.large_string()),
        "video_id": pa.dictionary(pa.int32(), pa.string()),
    }
    (result,) = read_rows(write_manifest(f"{memory_root}/m.parquet", [row], kinds))
    assert result.ok, result.error
    params = result.request.params
    assert (params.keyframes, params.frames, params.fps, params.seed, params.steps) == (3, 9, 12, 7, 4)
    assert params.xa_guidance == 0.25 and isinstance(params.xa_guidance, float)
    assert result.video_id == "good" and result.request.prompts == ("a photo of a dog",)


def test_integer_column_accepts_integer_xa_guidance(memory_root):
    (row,) = read_rows(
        write_manifest(f"{memory_root}/m.parquet", [{**GOOD, "xa_guidance": 1}], {"xa_guidance": pa.int8()})
    )
    assert row.request.params.xa_guidance == 1.0


def test_defaults(memory_root):
    (row,) = read_rows(write_manifest(f"{memory_root}/m.parquet", [GOOD]))
    params = row.request.params
    assert (params.keyframes, params.frames_per_segment, params.fps, params.ddim_steps) == (6, 24, 8, 50)
    assert params.xa_guidance is None and params.curve == "log"
    assert params.seed == default_seed("good")


def test_default_seed_is_stable_and_differs_between_ids(memory_root):
    # a pinned value: Python's salted hash() would change it between processes
    assert default_seed("lighthouse") == 863034900
    seeds = {default_seed(f"video-{i}") for i in range(100)}
    assert len(seeds) == 100 and all(0 <= seed < 2**31 for seed in seeds)
    rows_in = [{**GOOD, "seed": 123}, GOOD_2]
    rows = read_rows(write_manifest(f"{memory_root}/m.parquet", rows_in))
    assert rows[0].request.params.seed == 123
    assert rows[1].request.params.seed == default_seed("good-2") != default_seed("good")


def test_relative_image_resolves_against_local_manifest_folder(tmp_path):
    folder = tmp_path / "run"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "a.png").write_bytes(png_bytes())
    elsewhere = tmp_path / "elsewhere.png"
    rows_in = [
        {"video_id": "rel", "image": "img/a.png", "prompts": ["p"]},
        {"video_id": "abs", "image": str(elsewhere), "prompts": ["p"]},
        {"video_id": "url", "image": "s3://bucket/x.png", "prompts": ["p"]},
    ]
    rows = read_rows(write_manifest(str(folder / "manifest.parquet"), rows_in))
    assert [row.request.image for row in rows] == [
        str(folder / "img" / "a.png"),
        str(elsewhere),
        "s3://bucket/x.png",
    ]


def test_relative_image_resolves_on_memory_and_decodes(memory_root):
    with fsspec.open(f"{memory_root}/m/img/a.png", "wb") as handle:
        handle.write(png_bytes())
    url = write_manifest(
        f"{memory_root}/m/manifest.parquet", [{"video_id": "a", "image": "img/a.png", "prompts": ["p"]}]
    )
    (row,) = read_rows(url)
    assert row.request.image == f"{memory_root}/m/img/a.png"
    assert list(validate_manifest(url)) == []


@pytest.mark.parametrize(
    "manifest, image, expected",
    [
        ("s3://b/m/manifest.parquet", "img/a.png", "s3://b/m/img/a.png"),
        ("s3://b/m/manifest.parquet", "../shared/a.png", "s3://b/shared/a.png"),
        ("https://host/m/manifest.parquet", "img/a.png", "https://host/m/img/a.png"),
        ("file:///data/m/manifest.parquet", "img/a.png", "file:///data/m/img/a.png"),
        ("simplecache::s3://b/m.parquet", "a.png", "simplecache::s3://b/a.png"),
        ("s3://b/m/manifest.parquet", "memory://x/a.png", "memory://x/a.png"),
        ("s3://b/m/manifest.parquet", "http://host/a.png", "http://host/a.png"),
        ("s3://b/m/manifest.parquet", "/abs/a.png", "/abs/a.png"),
    ],
)
def test_resolve_image(manifest, image, expected):
    assert resolve_image(image, manifest) == expected


def test_extra_columns_are_carried(memory_root):
    rows_in = [
        {**GOOD, "split": "train", "score": 0.5},
        {**GOOD_2, "prompts": [], "split": "val", "score": None},
    ]
    rows = read_rows(write_manifest(f"{memory_root}/m.parquet", rows_in, {"score": pa.float64()}))
    assert rows[0].extra == {"split": "train", "score": 0.5}
    assert rows[1].extra == {"split": "val", "score": None} and not rows[1].ok  # carried on bad rows too


def test_limit(memory_root):
    url = write_manifest(f"{memory_root}/m.parquet", [{**GOOD, "video_id": f"v{i}"} for i in range(5)])
    assert [row.index for row in read_rows(url, limit=2)] == [0, 1]
    assert read_rows(url, limit=0) == []
    assert len(read_rows(url, limit=50)) == 5


def test_batches_give_the_same_rows_as_one_read(memory_root, monkeypatch):
    ids = ["a", "b", "c", "d", "b", "e", "a"]  # duplicates land in later batches
    url = write_manifest(
        f"{memory_root}/m.parquet", [{**GOOD, "video_id": i, "fps": 3 + n} for n, i in enumerate(ids)]
    )
    sizes = []
    original = pq.ParquetFile.iter_batches

    def recording(self, *args, **kwargs):
        for batch in original(self, *args, **kwargs):
            sizes.append(batch.num_rows)
            yield batch

    def no_whole_reads(*args, **kwargs):
        raise AssertionError("the manifest must be read in batches")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    monkeypatch.setattr(pq.ParquetFile, "read", no_whole_reads)
    monkeypatch.setattr(pq, "read_table", no_whole_reads)
    small = read_rows(url, batch_rows=2)
    assert sizes == [2, 2, 2, 1]
    assert small == read_rows(url)
    assert [row.index for row in small] == list(range(7))
    assert [row.error.reason for row in small if row.error] == ["duplicate of row 1", "duplicate of row 0"]


def test_validate_opens_images_that_iter_manifest_does_not(tmp_path):
    (tmp_path / "good.png").write_bytes(png_bytes())
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "truncated.png").write_bytes(png_bytes((64, 64))[:60])
    names = ["good", "missing", "empty", "corrupt", "truncated"]
    rows_in = [{"video_id": name, "image": f"{name}.png", "prompts": ["p"]} for name in names]
    url = write_manifest(str(tmp_path / "manifest.parquet"), rows_in)
    assert all(row.ok for row in read_rows(url))
    errors = list(validate_manifest(url))
    assert [(error.row, error.video_id, error.column) for error in errors] == [
        (1, "missing", "image"),
        (2, "empty", "image"),
        (3, "corrupt", "image"),
        (4, "truncated", "image"),
    ]
    assert "image not found" in errors[0].reason and "missing.png" in errors[0].reason
    assert "empty" in errors[1].reason and "cannot decode" in errors[2].reason
    assert list(validate_manifest(url, check_images=False)) == []


def test_print_validation(tmp_path):
    (tmp_path / "good.png").write_bytes(png_bytes())
    rows_in = [
        {"video_id": "good", "image": "good.png", "prompts": ["p"]},
        {"video_id": "gone", "image": "gone.png", "prompts": ["p"]},
        {"video_id": "good", "image": "good.png", "prompts": ["p"]},
        {"video_id": "fast", "image": "good.png", "prompts": ["p"], "fps": 121},
    ]
    out = io.StringIO()
    assert print_validation(write_manifest(str(tmp_path / "bad.parquet"), rows_in), out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("row 1 (video_id=gone): image: image not found:")
    assert lines[1] == "row 2 (video_id=good): video_id: duplicate of row 0"
    assert lines[2].startswith("row 3 (video_id=fast): fps: ")
    assert lines[3:] == ["4 rows, 3 invalid"]

    out = io.StringIO()
    assert print_validation(write_manifest(str(tmp_path / "ok.parquet"), rows_in[:1]), out=out) == 0
    assert out.getvalue() == "1 rows, 0 invalid\n"


@pytest.mark.parametrize(
    "rows_in, missing",
    [
        ([{"image": "a.png", "prompts": ["p"]}], "video_id"),
        ([{"video_id": "a", "image": "a.png"}], "prompts"),
        ([{"video_id": "a", "prompts": ["p"]}], "'image' or a 'source_prompt'"),
    ],
)
def test_missing_required_column_is_a_manifest_error(memory_root, rows_in, missing):
    url = write_manifest(f"{memory_root}/m.parquet", rows_in)
    with pytest.raises(ManifestError, match=missing) as raised:
        read_rows(url)
    assert url in str(raised.value) and "\n" not in str(raised.value)


def test_unreadable_manifest_is_a_manifest_error(tmp_path, memory_root):
    text = tmp_path / "manifest.parquet"
    text.write_text("video_id,prompts\na,b\n")
    with pytest.raises(ManifestError, match="cannot read manifest") as raised:
        read_rows(str(text))
    assert str(text) in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(ManifestError, match="not-there.parquet"):
        print_validation(f"{memory_root}/not-there.parquet", out=io.StringIO())


def test_the_edit_options_are_columns_and_a_missing_one_is_the_models(memory_root):
    edited = {
        **GOOD,
        "direction": "sentences",
        "direction_templates": ["a photo of a {}", "a {} in the grass"],
        "xa_until": 0.5,
        "xa_schedule": "linear",
        "inbetween": "latent",
        "negative": "empty",
        "negative_until": 0.75,
        "negative_from": 0.25,
        "inject_features": 0.5,
        "inject_layers": ["up_blocks.1.resnets.1", "up_blocks.2.resnets.0"],
        "inject_mode": "layout",
    }
    rows = read_rows(write_manifest(f"{memory_root}/m.parquet", [edited, {**GOOD_2, "direction": None}]))
    params = rows[0].request.params
    assert (params.direction, params.direction_templates) == (
        "sentences",
        ("a photo of a {}", "a {} in the grass"),
    )
    assert (params.xa_until, params.xa_schedule, params.inbetween) == (0.5, "linear", "latent")
    assert (params.negative, params.negative_from, params.negative_until) == ("empty", 0.25, 0.75)
    layers = ("up_blocks.1.resnets.1", "up_blocks.2.resnets.0")
    assert (params.inject_features, params.inject_layers, params.inject_mode) == (0.5, layers, "layout")
    default = rows[1].request.params  # None: filled in from the model's defaults when the run resolves it
    assert (default.direction, default.direction_templates, default.xa_until, default.negative) == (None,) * 4
