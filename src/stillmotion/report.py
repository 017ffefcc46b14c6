"""OUTPUT/report.html: one self-contained page per run (no network: previews are embedded).

The run's counts, throughput and time per stage (of the videos it made; after a rerun that made none,
the shown videos' own, from their metadata); a grid of previews (every finished row for a small run, else
a stable sample: the rows whose ids hash lowest, the same from run to run), each with its prompts, scores
and a link to its video; the failed rows with their reasons, in manifest order.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import html
import io
from collections import Counter
from dataclasses import dataclass, field

import PIL.Image

SAMPLE = 120  # previews on the page
FAILED_SHOWN = 200  # failed rows listed, the first in manifest order (the counts by reason cover all)
REASONS_KEPT = 100  # distinct failure reasons counted one by one; the rest count as "other"
THUMB_HEIGHT = 96
SHOWN_SCORES = ("structure", "worst_over_mean", "clip_t", "clip_f", "dino_structure")


@dataclass
class RunReport:
    """What the page shows, collected row by row (bounded memory at any manifest size)."""

    _sample: list = field(default_factory=list)  # heap of (-hash, item): the SAMPLE lowest hashes
    stage_seconds: Counter = field(default_factory=Counter)
    stage_rows: Counter = field(default_factory=Counter)
    _failed: list = field(default_factory=list)  # heap of (-row, video_id, reason): the first FAILED_SHOWN
    reasons: Counter = field(default_factory=Counter)
    finished: int = 0

    def add(self, record: dict, prompts: list[str] | None, timings: dict | None) -> None:
        if record["status"] == "failed":
            reason = record["error"] or "unknown"
            self.reasons[
                reason if reason in self.reasons or len(self.reasons) < REASONS_KEPT else "other"
            ] += 1
            item = (-record["row"], record["video_id"], reason)
            if len(self._failed) < FAILED_SHOWN:
                heapq.heappush(self._failed, item)
            elif item > self._failed[0]:  # rows finish out of order: keep the first in the manifest
                heapq.heapreplace(self._failed, item)
            return
        self.finished += 1
        if not record["cached"]:
            for stage, seconds in (timings or {}).items():
                self.stage_seconds[stage] += seconds
                self.stage_rows[stage] += 1
        rank = int.from_bytes(hashlib.sha256(record["video_id"].encode()).digest()[:8], "big")
        scores = {name: record.get(f"score_{name}") for name in SHOWN_SCORES}
        item = (record["row"], record["video_id"], list(prompts or []), scores, record["cached"])
        if len(self._sample) < SAMPLE:
            heapq.heappush(self._sample, (-rank, item))
        elif -rank > self._sample[0][0]:
            heapq.heapreplace(self._sample, (-rank, item))

    @property
    def failed(self) -> list[tuple]:
        """The listed failed rows (row, video_id, reason), in manifest order."""
        return sorted((-row, video_id, reason) for row, video_id, reason in self._failed)

    @property
    def shown(self) -> list[tuple]:
        """The sampled rows, in manifest order."""
        return sorted(item for _, item in self._sample)


def thumbnail(data: bytes | None) -> str | None:
    """A preview as a small embedded JPEG (data: URL), or None when it cannot be read."""
    if not data:
        return None
    try:
        image = PIL.Image.open(io.BytesIO(data)).convert("RGB")
    except (OSError, ValueError):
        return None
    width = max(1, round(image.width * THUMB_HEIGHT / image.height))
    image = image.resize((width, THUMB_HEIGHT), PIL.Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def render(
    report: RunReport,
    summary: dict,
    previews: dict[str, str | None],
    links: dict[str, str],
    made_before: dict[str, dict] | None = None,
) -> str:
    """The page: `previews` maps a shown video id to its embedded thumbnail, `links` to its video;
    `made_before` a shown video found complete to its own stage times (used when this run made none)."""
    e = html.escape
    seconds = summary["seconds"] or 0.0
    if summary["done"]:
        rate = f"{60 * summary['done'] / seconds:.1f} videos/min" if seconds else "–"
    else:
        rate = "no video made by this run"
    stage_seconds, stage_rows = report.stage_seconds, report.stage_rows
    stages_title = "Time per stage (videos made by this run)"
    if not stage_rows and made_before:
        stage_seconds, stage_rows = Counter(), Counter()
        for timings in made_before.values():
            for stage, value in timings.items():
                stage_seconds[stage] += value
                stage_rows[stage] += 1
        shown = f"{len(made_before)} video{'s' if len(made_before) != 1 else ''} shown"
        stages_title = f"Time per stage ({shown}, found complete: the times they took when made)"
    counts = "".join(
        f"<div class=count><b>{summary[k]}</b>{label}</div>"
        for k, label in (
            ("rows", "rows"),
            ("done", "made"),
            ("cached", "already complete"),
            ("failed", "failed"),
        )
    )
    stages = "".join(
        f"<tr><td>{e(stage)}</td><td>{stage_rows[stage]}</td><td>{total:.1f}</td>"
        f"<td>{total / stage_rows[stage]:.2f}</td></tr>"
        for stage, total in stage_seconds.most_common()
    )
    cards = []
    for row, video_id, prompts, scores, cached in report.shown:
        image = previews.get(video_id)
        picture = (
            f'<img src="{image}" alt="{e(video_id)}">' if image else "<div class=missing>no preview</div>"
        )
        shown_scores = " ".join(f"{k} {v:.3f}" for k, v in scores.items() if v is not None)
        link = links.get(video_id)
        title = f'<a href="{e(link)}">{e(video_id)}</a>' if link else e(video_id)
        cards.append(
            f"<figure class=card>{picture}<figcaption>{title} <span class=row>row {row}"
            f"{' · cached' if cached else ''}</span><br>{' → '.join(e(p) for p in prompts)}"
            f"<br><small>{e(shown_scores)}</small></figcaption></figure>"
        )
    sampled = report.finished > len(cards)
    grid_title = f"{len(cards)} of {report.finished} finished videos" + (
        " (a stable sample: the same rows on every run)" if sampled else ""
    )
    reasons = "".join(
        f"<tr><td>{n}</td><td>{e(reason)}</td></tr>" for reason, n in report.reasons.most_common()
    )
    failed = "".join(
        f"<tr><td>{row}</td><td>{e(str(video_id))}</td><td>{e(reason)}</td></tr>"
        for row, video_id, reason in report.failed
    )
    failures = (
        f"<h2>Failed rows ({summary['failed']})</h2>"
        f"<table><tr><th>rows</th><th>reason</th></tr>{reasons}</table><table><tr><th>row</th><th>video_id</th><th>reason</th></tr>{failed}</table>"
        if summary["failed"]
        else ""
    )
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>stillmotion run report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }}
.counts {{ display: flex; gap: 16px; margin: 12px 0; }}
.count {{ border: 1px solid #ccc; border-radius: 6px; padding: 8px 16px; }}
.count b {{ display: block; font-size: 24px; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 12px; }}
.card {{ margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 6px; overflow: hidden; }}
.card img {{ display: block; height: {THUMB_HEIGHT}px; max-width: 100%; object-fit: contain; }}
.missing {{ height: {THUMB_HEIGHT}px; background: #eee; color: #888; }}
.row {{ color: #888; }}
</style></head><body>
<h1>stillmotion run</h1>
<div class=counts>{counts}</div>
<p>{seconds:.1f} s wall, {rate}{f", {summary['repaired']} repaired" if summary.get("repaired") else ""}</p>
<h2>{e(stages_title)}</h2>
<table><tr><th>stage</th><th>videos</th><th>total s</th><th>mean s</th></tr>{stages}</table>
<h2>{e(grid_title)}</h2>
<div class=grid>{"".join(cards)}</div>
{failures}
</body></html>
"""
