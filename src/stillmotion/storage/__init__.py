"""fsspec storage, one module per idea:

fs.py         Store: every path relative to one URL; atomic writes, retries, owner tags, clean-up
artifacts.py  ArtifactStore: content-addressed intermediates, checked on every read
published.py  OutputStore: videos published whole (metadata.json last), logs
leases.py     Leases: a name claimed by one live process (rows, shards), renewed while held

outputs = OutputStore("s3://bucket/run")
artifacts = ArtifactStore("s3://bucket/run/.cache/artifacts")
key = artifact_key("invert", image_sha256=..., caption=..., model=..., steps=50)
artifacts.put_tensors(key, {"inverted_noise": x_T}, record={"seconds": 1.2})

The tunables (ABANDONED_AFTER_S, FLOW_RETRY_DELAYS, LEASE_RENEW_S, ...) are read from their own module:
change them there (`monkeypatch.setattr(storage.leases, "LEASE_RENEW_S", ...)`), not on this package.
"""

from .artifacts import ArtifactStore, DamagedArtifact, artifact_key
from .fs import (
    ABANDONED_AFTER_S,
    STORAGE_OPTIONS_ENV,
    TEMPORARY_PREFIX,
    StorageError,
    Store,
    abandoned,
    configure_storage,
    is_transient,
    machine_id,
    owner_tag,
    protocol_of,
    remove_abandoned,
    replace_folder,
    retried,
)
from .leases import LEASES, LeaseKeeper, Leases, shard_lease
from .published import FAILURES, OutputError, OutputStore, check_video_folder, publish_video_folder

__all__ = [
    "ABANDONED_AFTER_S",
    "FAILURES",
    "LEASES",
    "STORAGE_OPTIONS_ENV",
    "TEMPORARY_PREFIX",
    "ArtifactStore",
    "DamagedArtifact",
    "LeaseKeeper",
    "Leases",
    "OutputError",
    "OutputStore",
    "StorageError",
    "Store",
    "abandoned",
    "artifact_key",
    "check_video_folder",
    "configure_storage",
    "is_transient",
    "machine_id",
    "owner_tag",
    "protocol_of",
    "publish_video_folder",
    "remove_abandoned",
    "replace_folder",
    "retried",
    "shard_lease",
]
