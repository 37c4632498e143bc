"""Documents: Parquet files of rows, one per page, that extract writes and every later data
stage reads and rewrites (clean, dedup and paragraph dedup add their own columns or drop rows;
the text is always `text`, the id always `id`). A document's id is a hash of its URL, so the
same page has the same id in every run and every split by id is stable.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

from formats.manifest import load_manifest

DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("url", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("fetched_at", pa.string()),
        ("warc_record_id", pa.string()),
        ("digest", pa.string()),
        ("warc_file", pa.string()),
        ("html_bytes", pa.int64()),
        ("truncated", pa.bool_()),
    ]
)


def doc_id(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()[:16]


def doc_files(dataset: str, folder: str = "docs") -> list[Path]:
    """The dataset's Parquet files under `folder`, in its manifest's order."""
    m = load_manifest(dataset)
    return [Path(dataset) / f.path for f in m.files if f.path.startswith(folder + "/") and f.path.endswith(".parquet")]
