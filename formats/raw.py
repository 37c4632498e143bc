"""Raw datasets: the WARC files the data flow starts from, and what says where they are.

- crawl: its own WARC files, `warc/*.warc.gz`, listed in its manifest;
- ingest: `sources.json`, the WARC files it read in place ({url, size, etag}: a local path or
  an object-store/HTTP URL), never copied;
- recrawl: its WARC files of changed and new pages, and `changes.parquet`, every URL whose
  document a refresh must add, replace or retire (url, doc_id, change: new|changed|gone).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from formats.files import write_atomic
from formats.manifest import load_manifest

SOURCES = "sources.json"
CHANGES = "changes.parquet"
CHANGES_SCHEMA = pa.schema([("url", pa.string()), ("doc_id", pa.string()), ("change", pa.string())])


def write_sources(out: Path, sources: list[dict]) -> None:
    write_atomic(out / SOURCES, json.dumps(sources, indent=1).encode())


def read_sources(dataset: str | Path) -> list[dict]:
    return json.loads((Path(dataset) / SOURCES).read_text())


def write_changes(out: Path, changes: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(changes, CHANGES_SCHEMA), out / CHANGES)


def read_changes(dataset: str | Path) -> list[dict]:
    return pq.read_table(Path(dataset) / CHANGES).to_pylist()


def warc_files(raw: list[str]) -> list[dict]:
    """The raw datasets' WARC files as sources {url, size, etag}: the crawler's files inside
    its dataset, ingest's where they lie (its sources.json)."""
    files = []
    for ds in raw:
        m = load_manifest(ds)
        for f in m.files:
            if f.path.endswith((".warc", ".warc.gz")):
                files.append({"url": str(Path(ds) / f.path), "size": f.bytes, "etag": ""})
            elif f.path == SOURCES:
                files += read_sources(ds)
    return files
