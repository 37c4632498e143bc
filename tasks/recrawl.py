"""recrawl: fetch again what an earlier crawl (or recrawl) stored, with conditional requests.

Unchanged pages answer 304 (or, from servers that ignore validators, the same bytes) and are
not stored again; changed and newly linked pages go to this dataset's WARC files; pages that
now answer 404/410 are marked gone. `changes.parquet` lists every URL whose document must be
added, replaced or retired, so the stages after it work on those pages only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from pydantic import BaseModel, ConfigDict, Field

from formats.documents import doc_id
from formats.manifest import load_manifest
from formats.raw import write_changes
from tasks.crawl.crawl_config import CrawlConfig
from tasks.crawl.crawler import run_crawler
from tasks.crawl.state import KEPT
from tasks.orchestration import stage_task
from tasks.stage import Progress, no_progress

VERSION = 2  # 2: builtin:pydoc under a fixed name
GONE = ("failed:http_404", "failed:http_410")


class RecrawlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    crawl: CrawlConfig
    at: str = Field(description="when this refresh was scheduled (ISO 8601); each refresh is its own dataset")


def previous_state(raw: str) -> dict:
    m = load_manifest(raw)
    if m.stage not in ("crawl", "recrawl"):
        raise ValueError(f"recrawl: {raw} is a {m.stage} dataset; a refresh starts from a crawl")
    return json.loads((Path(raw) / "state.json").read_text())


def classify(previous: dict[str, dict], now: dict[str, dict]) -> list[dict]:
    """URLs settled in this crawl whose documents change: new, changed, or gone."""
    rows = []
    for url, e in sorted(now.items()):
        before = previous.get(url, {}).get("outcome") in KEPT
        if e["outcome"] == "page":
            rows.append({"url": url, "doc_id": doc_id(url), "change": "changed" if before else "new"})
        elif before and f"{e['outcome']}:{e.get('reason', '')}" in GONE:
            rows.append({"url": url, "doc_id": doc_id(url), "change": "gone"})
    return rows


class RecrawlInputs(TypedDict):
    previous: str  # the crawl or recrawl to fetch again


def recrawl(inputs: RecrawlInputs, cfg: RecrawlConfig, out: Path, progress: Progress = no_progress) -> dict:
    raw = inputs["previous"]
    state = previous_state(raw)
    stats, settled = run_crawler(cfg.crawl, out, progress, previous=state)
    changes = classify(state["urls"], settled)
    write_changes(out, changes)
    counts = {kind: sum(1 for c in changes if c["change"] == kind) for kind in ("new", "changed", "gone")}
    unchanged = sum(1 for e in settled.values() if e["outcome"] == "not_modified")
    return {**stats, "changes": counts, "unchanged": unchanged, "previous": Path(raw).name, "at": cfg.at}


recrawl_task = stage_task(recrawl, resumable=True, retries=2, retry_delay_seconds=[10, 60], retry_jitter_factor=0.5)
