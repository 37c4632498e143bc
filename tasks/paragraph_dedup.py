"""paragraph_dedup: paragraphs (lines) repeated across documents, removed from all but the first.

Document-level MinHash keeps two documents that share long verbatim blocks (a repeated section,
boilerplate, an inherited method list) as long as the rest differs; those blocks then weigh on
training and sit in both the train and the val split. The peers remove them at a finer grain
(CCNet's line dedup, dolma's paragraph filter, datatrove's sentence dedup); here each line of a
document is a paragraph (extract writes one line per block):

- a line is normalized as dedup normalizes text (NFKC, lower case, words) and hashed (64 bits);
  lines shorter than `min_chars` are left alone (headings, short list items, code lines);
- a paragraph found in more than `max_repeats` documents is kept in the first of them only:
  the earliest batch (the persistent index) whose document is still live, then document id
  order within this one;
- a document that loses more than `max_removed_fraction` of its characters is dropped with the
  reason (`dropped.parquet`); every removed line is in `removed.parquet` (document, line,
  characters, the document that keeps it) for audit.

The index holds each batch's paragraphs (hash, the document that has it, whether it kept it), as
segments beside dedup's MinHash index (`<root>/index/paragraphs-<key>/`, on an object store the
same append-only log), so a refresh deduplicates paragraphs against the batches before it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TypedDict

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from formats.documents import doc_files
from formats.index_segments import append_index_segment, index_segments
from formats.manifest import digest_of
from tasks import remote_index
from tasks.orchestration import stage_task
from tasks.remote_index import persistent_index
from tasks.stage import Progress, no_progress
from tasks.text_hash import normalize_for_hash

VERSION = 1
# one row per (paragraph, document that has it), `kept` where the document kept it; hash 0 marks
# each document of the batch, so a document a later batch replaces is known even without paragraphs
SEGMENT_SCHEMA = pa.schema([("hash", pa.uint64()), ("doc", pa.string()), ("kept", pa.bool_())])
REMOVED_SCHEMA = pa.schema([("id", pa.string()), ("line", pa.int32()), ("chars", pa.int32()), ("kept_in", pa.string()),
                            ("text", pa.string())])


class ParagraphDedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    min_chars: int = Field(60, ge=1, description="shorter lines are left alone")
    max_repeats: int = Field(1, ge=1, description="a paragraph in more documents than this is kept in the first only")
    max_removed_fraction: float = Field(0.9, gt=0, le=1, description="a document losing more of its characters is dropped")
    index_dir: str = Field("", description="persistent index; empty: <root>/index")

    def index_key(self) -> str:
        return digest_of({"min_chars": self.min_chars, "v": VERSION})[:12]


def paragraph_hash(line: str) -> int:
    return xxhash.xxh3_64_intdigest(normalize_for_hash(line).encode())


def eligible(lines: list[str], cfg: ParagraphDedupConfig) -> list[int | None]:
    """Each line's hash, or None for a line left alone (short, or nothing but symbols)."""
    out: list[int | None] = []
    for line in lines:
        text = line.strip()
        out.append(paragraph_hash(text) if len(text) >= cfg.min_chars and normalize_for_hash(text) else None)
    return out


def earlier_paragraphs(index: Path, this_segment: str, batch_ids: set[str]) -> tuple[Counter, set[int]]:
    """(paragraph hash -> live documents of earlier batches that have it, hashes some live earlier
    document keeps). Live: a document's latest version, unless this batch replaces it (a refresh
    of a changed page); a paragraph whose keeper is replaced now has to be kept again now."""
    segments = [seg for seg in (index_segments(index) if index.exists() else []) if seg["name"] != this_segment]
    tables = {seg["seq"]: pq.read_table(index / f"{seg['name']}.parquet") for seg in segments}
    latest: dict[str, int] = {}
    for seq in sorted(tables):
        for doc in set(tables[seq].column("doc").to_pylist()):
            latest[doc] = seq
    contains: Counter = Counter()
    keepers: set[int] = set()
    for seq, t in tables.items():
        for h, doc, kept in zip(t.column("hash").to_pylist(), t.column("doc").to_pylist(), t.column("kept").to_pylist()):
            if h and latest[doc] == seq and doc not in batch_ids:
                contains[h] += 1
                if kept:
                    keepers.add(h)
    return contains, keepers


class ParagraphDedupInputs(TypedDict):
    documents: str


def paragraph_dedup(inputs: ParagraphDedupInputs, cfg: ParagraphDedupConfig, out: Path, progress: Progress = no_progress) -> dict:
    docs = inputs["documents"]
    files = doc_files(docs)
    index, shared_index = persistent_index(f"paragraphs-{cfg.index_key()}", cfg.index_dir, out)
    segment = out.name.removesuffix(".partial")
    if shared_index:
        remote_index.pull(shared_index, index)

    # pass 1: in document id order, which document is the first to have each paragraph
    tables = [pq.read_table(f) for f in files]
    hashes = {}  # doc id -> per-line hash or None
    for t in tables:
        for doc, text in zip(t.column("id").to_pylist(), t.column("text").to_pylist()):
            hashes[doc] = eligible(text.split("\n"), cfg)
    before, kept_earlier = earlier_paragraphs(index, segment, set(hashes))
    batch: Counter = Counter()
    first: dict[int, str] = {}
    for doc in sorted(hashes):
        for h in dict.fromkeys(h for h in hashes[doc] if h is not None):
            batch[h] += 1
            first.setdefault(h, doc)

    # pass 2: each part as it was, its documents without the paragraphs others keep
    (out / "docs").mkdir(exist_ok=True)
    removed_rows, dropped_rows = [], []
    segment_rows: list[tuple[int, str, bool]] = [(0, doc, False) for doc in sorted(hashes)]
    stats = Counter()
    for n, t in enumerate(tables):
        kept_rows = []
        for row in t.to_pylist():
            lines = row["text"].split("\n")
            keep, lost, mine = [], 0, []  # mine: this document's index rows
            for i, (line, h) in enumerate(zip(lines, hashes[row["id"]])):
                stats["lines"] += 1
                stats["paragraphs"] += h is not None
                total = before.get(h, 0) + batch.get(h, 0) if h is not None else 0
                kept_in = "an earlier batch" if h in kept_earlier else first.get(h)
                if h is not None and total > cfg.max_repeats and kept_in != row["id"]:
                    removed_rows.append({"id": row["id"], "line": i, "chars": len(line), "kept_in": kept_in, "text": line})
                    mine.append((h, row["id"], False))
                    lost += len(line)
                    continue
                keep.append(line)
                if h is not None:
                    mine.append((h, row["id"], True))
            stats["chars_in"] += len(row["text"])
            stats["paragraphs_removed"] += len(lines) - len(keep)
            stats["chars_removed"] += lost
            if row["text"] and lost / len(row["text"]) > cfg.max_removed_fraction:
                dropped_rows.append({**row, "reason": f"paragraph_dedup: {lost / len(row['text']):.0%} of its text is in other documents"})
                segment_rows.extend((h, doc, False) for h, doc, _ in mine)  # a dropped document keeps nothing
                continue
            segment_rows.extend(mine)
            stats["documents_changed"] += lost > 0
            kept_rows.append({**row, "text": "\n".join(keep)})
        pq.write_table(pa.Table.from_pylist(kept_rows, t.schema), out / "docs" / f"part-{n:05d}.parquet", compression="zstd")
        progress(n + 1, len(tables))
    schema = tables[0].schema if tables else pa.schema([("id", pa.string()), ("text", pa.string())])
    pq.write_table(pa.Table.from_pylist(dropped_rows, schema.append(pa.field("reason", pa.string()))), out / "dropped.parquet")
    pq.write_table(pa.Table.from_pylist(removed_rows, REMOVED_SCHEMA), out / "removed.parquet")

    segment_rows.sort()
    seg = pa.table({"hash": pa.array([r[0] for r in segment_rows], pa.uint64()), "doc": pa.array([r[1] for r in segment_rows], pa.string()),
                    "kept": pa.array([r[2] for r in segment_rows], pa.bool_())})
    append_index_segment(index, segment, [seg], SEGMENT_SCHEMA)
    if shared_index:
        remote_index.push(shared_index, index, segment)
    documents_in = len(hashes)
    return {
        "documents_in": documents_in,
        "documents_out": documents_in - len(dropped_rows),
        "documents_dropped": len(dropped_rows),
        "documents_changed": stats["documents_changed"],
        "lines": stats["lines"],
        "paragraphs": stats["paragraphs"],
        "paragraphs_removed": stats["paragraphs_removed"],
        "chars_in": stats["chars_in"],
        "chars_removed": stats["chars_removed"],
        "removed_fraction": round(stats["chars_removed"] / stats["chars_in"], 4) if stats["chars_in"] else 0.0,
        "index_paragraphs_before": len(before),
        "repeated_paragraphs": sum(1 for h, c in batch.items() if c + before.get(h, 0) > cfg.max_repeats),
        "index": shared_index or str(index),
    }


paragraph_dedup_task = stage_task(paragraph_dedup)
