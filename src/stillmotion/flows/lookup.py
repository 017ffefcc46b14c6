"""Which rows of a run need work: each row's fingerprint against what its published video (or its last
failure) records, looked up in batches. No Prefect, no torch.

    lookup = RowLookup(videos, model_info, shards=tracker.shards)
    for row, state in lookup.check(rows):      # rows: a batch of valid ManifestRows
        state.work, state.changed, state.fingerprint, state.request (resolved)

A row is current when its video's metadata.json (or, in webdataset format, the complete shard that
holds it) records its fingerprint; it failed for good when its last failure was on its own input
(FAILURES, written by the stage that failed) with the same fingerprint. Everything else is work:
made again, the stages reusing every artifact whose key did not change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..fingerprints import FAILURES, captioner_fingerprint, model_identity, row_fingerprint, source_identities
from ..models.identity import LOCAL_REVISION_PREFIX
from ..outputs import METADATA
from ..requests import VideoRequest, resolved
from ..storage import OutputStore, retried


@dataclass(frozen=True)
class RowState:
    request: VideoRequest  # resolved: the model's defaults filled in
    param_sources: dict
    fingerprint: str
    work: bool  # no current video, and no failure on this same input
    changed: bool = False  # a video of the row exists, made from something else (it is made again)
    failed: str | None = None  # not work: the reason of the earlier failure on this same input


def read_many(store: OutputStore, names: list[str]) -> dict[str, bytes]:
    """{name: bytes} of the files among `names` that exist, fetched in one call (concurrent on object
    stores); any error but a missing file is raised (a transient one tried again, see `retried`), never
    taken for a missing video."""
    if not names:
        return {}
    paths = {store.path(name): name for name in names}

    def fetch() -> dict:
        found = store.fs.cat(list(paths), on_error="return")
        for value in found.values():
            if isinstance(value, BaseException) and not isinstance(value, FileNotFoundError):
                raise value
        return found

    found = retried(fetch)
    return {paths[path]: data for path, data in found.items() if isinstance(data, bytes)}


def recorded_fingerprint(data: bytes | None) -> str | None:
    try:
        return json.loads(data).get("fingerprint") if data else None
    except (ValueError, AttributeError):
        return None


class RowLookup:
    """The state of each row of a run against the videos and failures earlier runs left."""

    def __init__(self, videos: OutputStore, info, shards=None, force: bool = False) -> None:
        self.videos, self.info, self.shards, self.force = videos, info, shards, force
        hub = not info.revision.startswith(LOCAL_REVISION_PREFIX)
        self.model = model_identity(info.model_id, info.revision, info.image_size, hub)
        self._captioner = None

    def captioner(self) -> str:
        if self._captioner is None:
            self._captioner = captioner_fingerprint(self.info.path)
        return self._captioner

    def fingerprints(self, requests: list[VideoRequest]) -> list[tuple]:
        """(resolved request, where its parameters came from, fingerprint) of each request."""
        resolved_rows = [resolved(request, self.info.defaults) for request in requests]
        sources = source_identities(r.image for r, _ in resolved_rows if r.image is not None)
        out = []
        for request, param_sources in resolved_rows:
            blip = not request.synthetic and not request.caption
            fingerprint = row_fingerprint(
                request,
                self.model,
                sources.get(request.image),
                captioner=self.captioner() if blip else None,
            )
            out.append((request, param_sources, fingerprint))
        return out

    def check(self, rows: list) -> list[tuple]:
        """[(row, RowState)] of a batch of valid rows."""
        made = self.fingerprints([row.request for row in rows])
        ids = [row.video_id for row in rows]
        published = {} if self.force else self.published(ids)
        failures = {}
        if not self.force:
            pending = [i for i, (_, _, fp) in zip(ids, made, strict=True) if published.get(i) != fp]
            failures = self.failures(pending)
        states = []
        for row, (request, sources, fingerprint) in zip(rows, made, strict=True):
            found = published.get(row.video_id)
            failure = failures.get(row.video_id) or {}
            if found == fingerprint:
                state = RowState(request, sources, fingerprint, work=False)
            elif failure.get("fingerprint") == fingerprint and failure.get("reason"):
                state = RowState(request, sources, fingerprint, work=False, failed=failure["reason"])
            else:
                state = RowState(request, sources, fingerprint, work=True, changed=found is not None)
            states.append((row, state))
        return states

    def published(self, ids: list[str]) -> dict[str, str]:
        """{video_id: the fingerprint its complete video records ("" for one that records none)}."""
        found = read_many(self.videos, [f"{video_id}/{METADATA}" for video_id in ids])
        out = {name.split("/", 1)[0]: recorded_fingerprint(data) or "" for name, data in found.items()}
        if self.shards is not None:  # webdataset: a row whose folder is gone may be in a complete shard
            for video_id in ids:
                if video_id not in out and self.shards.is_complete(video_id):
                    out[video_id] = self.shards.fingerprint_of(video_id) or ""
        return out

    def failures(self, ids: list[str]) -> dict[str, dict]:
        found = read_many(self.videos, [FAILURES.format(video_id=video_id) for video_id in ids])
        out = {}
        for name, data in found.items():
            try:
                out[name.removeprefix(".logs/").removesuffix(".json")] = json.loads(data)
            except ValueError:
                continue
        return out

    def is_current(self, video_id: str, fingerprint: str) -> bool:
        """Whether the row's video, made meanwhile by another run, is the one this row asks for."""
        return self.published([video_id]).get(video_id) == fingerprint
