"""Which weights a model id or folder means, without importing torch, diffusers or transformers.

    path, revision = resolve_model("CompVis/stable-diffusion-v1-4")  # hub: the snapshot's commit
    path, revision = resolve_model("/models/sd14")                   # folder: "local-" + 16 hex
    info = inspect_model("/models/sd14")                             # + image size, method defaults

A folder's revision is a hash of the files its loader reads, so notes, logs or other models beside
the weights leave it unchanged: in a Stable Diffusion folder, model_index.json and the configs,
safetensors weights and tokenizer files of unet/, vae/, text_encoder/, tokenizer/ and scheduler/;
in a single-model folder (captioner/, scorers/clip, ...), those files at its top level. Each file's
sha256 is cached against its absolute path, size and mtime, in memory and in a small JSON file under
the user's cache folder, so a process on an unchanged folder reads no weights. The lazy hub import
keeps the light commands (and the row fingerprint of a rerun) free of torch.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotAvailable
from .params import ModelDefaults

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
LOCAL_REVISION_PREFIX = "local-"  # the revision of a local folder: this prefix + a content fingerprint

# the parts of a Stable Diffusion folder that `load_stable_diffusion` reads
SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# what a hub snapshot skips, and so what a folder's revision skips too (other formats, variants, docs)
WEIGHT_IGNORE = ["*.bin", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.pb", "*fp16*", "*non_ema*", "*.md"]
# the files from_pretrained reads beside configs (.json) and weights (.safetensors)
_TOKENIZER_FILES = {"merges.txt", "vocab.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model"}
_HASH_CACHE_FILE = "file-hashes.json"
_HASH_CACHE_VERSION = 1


def default_model() -> str:
    return os.environ.get("STILLMOTION_MODEL", DEFAULT_MODEL)


def resolve_model(model: str, revision: str | None = None) -> tuple[Path, str]:
    """A model id or folder to (local folder, revision): the hub commit, or a content fingerprint.

    With `revision`, the result must be that revision: a hub id is fetched at that commit, and a
    folder whose files no longer match it raises ModelNotAvailable rather than load other weights.
    A string that can only be a path (see `looks_like_path`) and is not a folder fails here, not at
    the hub.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        path = folder.resolve()
        found = LOCAL_REVISION_PREFIX + fingerprint_folder(path)
        if revision is not None and found != revision:
            raise ModelNotAvailable(
                f"model folder {path} has changed: its files are now {found}, the run keyed {revision}"
            )
        return path, found
    if looks_like_path(model):
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ModelNotAvailable(f"model folder {model} {what}")
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(model, revision=revision, ignore_patterns=WEIGHT_IGNORE))
    except Exception as error:  # noqa: BLE001 - the hub raises many kinds; all mean "not available"
        at = f" at revision {revision}" if revision else ""
        raise ModelNotAvailable(
            f"model {model!r}{at} is not a local folder and could not be fetched from the Hugging Face Hub "
            f"({type(error).__name__}). Offline, pass --model with a local folder "
            f"(`stillmotion make-tiny-model DIR` writes a tiny one)."
        ) from None
    return path, path.name  # the snapshot folder is named by its commit hash


def looks_like_path(model: str) -> bool:
    """Whether `model` can only mean a folder: a hub id is `name` or `owner/name`, never absolute,
    never `./`, `../` or `~`-relative, with at most one slash, and not under a folder that exists here."""
    if os.path.isabs(model) or model.startswith(("./", "../", "~")) or model in (".", ".."):
        return True
    if os.sep != "/" and os.sep in model:
        return True
    return model.count("/") > 1 or ("/" in model and Path(model).parent.is_dir())


def model_files(path: Path) -> list[Path]:
    """The files a folder's loader reads, sorted: those its revision covers."""
    if any((path / part).is_dir() for part in SD_PARTS):  # a Stable Diffusion folder
        files = [path / "model_index.json"]
        for part in SD_PARTS:
            files += _loaded_files(path / part)
        return sorted(file for file in files if file.is_file())
    return _loaded_files(path)


def _loaded_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        file
        for file in folder.iterdir()
        if file.is_file()
        and (file.suffix in {".json", ".safetensors"} or file.name in _TOKENIZER_FILES)
        and not any(fnmatch.fnmatch(file.name, pattern) for pattern in WEIGHT_IGNORE)
    )


def fingerprint_folder(path: Path) -> str:
    """16 hex digits of a hash of the loaded files' relative paths and contents (not times)."""
    path = Path(path).resolve()
    files = model_files(path)
    digest = hashlib.sha256()
    for file, sha in zip(files, file_hashes(files), strict=True):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha}\n".encode())
    return digest.hexdigest()[:16]


_HASHES: dict[tuple[str, int, int], str] = {}  # (absolute path, size, mtime_ns) -> sha256


def file_hashes(files: list[Path]) -> list[str]:
    """The sha256 of each file, read only when neither this process nor the disk cache has it."""
    keys = [_stat_key(file) for file in files]
    if all(key in _HASHES for key in keys):
        return [_HASHES[key] for key in keys]
    _HASHES.update((key, sha) for key, sha in _read_disk_cache().items() if key not in _HASHES)
    hashes, fresh = [], {}
    for file, key in zip(files, keys, strict=True):
        sha = _HASHES.get(key) or _sha256(file)
        if key not in _HASHES and _stat_key(file) == key:  # cached only if not written to while read
            fresh[key] = sha
        hashes.append(sha)
    if fresh:
        _HASHES.update(fresh)
        _write_disk_cache(fresh)
    return hashes


def _stat_key(file: Path) -> tuple[str, int, int]:
    stat = file.stat()
    return str(file.absolute()), stat.st_size, stat.st_mtime_ns


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def hash_cache_path() -> Path:
    """`$STILLMOTION_CACHE_DIR/file-hashes.json`; the folder defaults to `$XDG_CACHE_HOME/stillmotion`
    or `~/.cache/stillmotion`."""
    folder = os.environ.get("STILLMOTION_CACHE_DIR")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
        folder = Path(base) / "stillmotion"
    return Path(folder) / _HASH_CACHE_FILE


def _read_disk_cache() -> dict[tuple[str, int, int], str]:
    """The cached hashes; an unreadable, corrupt or foreign file counts as empty (it is rewritten)."""
    try:
        document = json.loads(hash_cache_path().read_text())
        if document.get("version") != _HASH_CACHE_VERSION:
            return {}
        return {
            (path, int(size), int(mtime_ns)): str(sha)
            for path, (size, mtime_ns, sha) in document["files"].items()
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _write_disk_cache(fresh: dict[tuple[str, int, int], str]) -> None:
    """Merge `fresh` into the cache file (temp file + os.replace), dropping entries whose files have
    changed or gone; a cache folder that cannot be written is skipped."""
    entries = {**_read_disk_cache(), **fresh}
    files = {}
    for (path, size, mtime_ns), sha in entries.items():
        try:
            stat = os.stat(path)
        except OSError:
            continue
        if (stat.st_size, stat.st_mtime_ns) == (size, mtime_ns):
            files[path] = [size, mtime_ns, sha]
    target = hash_cache_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w") as out:
                json.dump({"version": _HASH_CACHE_VERSION, "files": files}, out)
            os.replace(temporary, target)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError:
        return


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a model in cache keys and metadata, read from its configs (no weights loaded)."""

    model_id: str
    revision: str
    path: str
    image_size: int  # pixels: unet sample_size x VAE scale factor
    defaults: ModelDefaults = ModelDefaults()  # the method values that travel with the model


def inspect_model(model: str | None = None) -> ModelInfo:
    """Resolve a model id or folder and read its size from the configs; loads no weights."""
    model = model or default_model()
    path, revision = resolve_model(model)
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
    except FileNotFoundError as error:
        raise ModelNotAvailable(f"model folder {path} is not a Stable Diffusion model: {error}") from None
    try:
        defaults = ModelDefaults.of_folder(path)
    except ValueError as error:
        raise ModelNotAvailable(str(error)) from None
    size = unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)
    return ModelInfo(model, revision, str(path), size, defaults)


def captioner_identity(sd_path: Path | str | None) -> tuple[str, Path, str]:
    """(id, local folder, revision) of the captioner that goes with a model folder: its revision
    covers captioner/ only."""
    local = Path(sd_path) / "captioner" if sd_path is not None else None
    model_id = str(local) if local is not None and local.is_dir() else DEFAULT_CAPTIONER
    try:
        path, revision = resolve_model(model_id)
    except ModelNotAvailable:
        if model_id != DEFAULT_CAPTIONER:
            raise
        where = f"the model folder {sd_path} has no captioner/ and " if sd_path is not None else ""
        raise ModelNotAvailable(
            f"no captioner: {where}BLIP ({DEFAULT_CAPTIONER}) could not be fetched from the Hugging Face "
            "Hub; give the image a caption (a `caption` column, or `generate --caption TEXT`)"
        ) from None
    return model_id, path, revision
