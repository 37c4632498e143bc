"""ingest: existing WARC / WARC.gz files (local paths, globs or fsspec URLs such as
s3://commoncrawl/...) enter the same raw/ contract as the crawler's output.

Files are copied as they are; a damaged file is not refused here but quarantined record by
record in extract, so one bad file never costs the others.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import fsspec
from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from tasks.orchestration import STAGE_CACHE, prefect_stage
from tasks.stage import Progress, no_progress

VERSION = 1


class IngestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(default_factory=list, description="WARC files, globs or fsspec URLs")


def ingest(inputs: list[str], cfg: IngestConfig, out: Path, progress: Progress = no_progress) -> dict:
    if inputs:
        raise ValueError("ingest takes no input datasets")
    files = fsspec.open_files(cfg.paths, mode="rb", expand=True)
    if not files:
        raise FileNotFoundError(f"ingest.paths matched no file: {cfg.paths}")
    warc_dir = out / "warc"
    warc_dir.mkdir(parents=True, exist_ok=True)
    sources, total = [], 0
    for i, of in enumerate(files):
        name = of.path.rsplit("/", 1)[-1]
        if not name.endswith((".warc", ".warc.gz")):
            raise ValueError(f"{of.path}: not a WARC file (expected .warc or .warc.gz)")
        suffix = ".warc.gz" if name.endswith(".gz") else ".warc"
        with of as src, open(warc_dir / f"ingest-{i:05d}{suffix}", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            total += dst.tell()
        sources.append(of.full_name)
        progress(i + 1, len(files))
    return {"warc_files": len(files), "bytes": total, "sources": sources}


@task(name="ingest", cache_policy=STAGE_CACHE, persist_result=True, retries=1)
def ingest_task(inputs: list[str], cfg: IngestConfig, root: str) -> str:
    return prefect_stage("ingest", VERSION, ingest, inputs, cfg, root)
