"""A persistent dedup index: what earlier batches kept, so a later batch is deduplicated against
them. A directory of Parquet segments, one per appended batch (id, hash, signature: dedup's
MinHash rows; paragraph dedup writes its own schema), and `segments.json`, which orders them by
a sequence number (never by file time, so a copied or restored index behaves the same).
Appends take a lock on the directory; on an object store the same segments travel through an
append-only log (tasks/remote_index.py).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import write_atomic

INDEX_SCHEMA = pa.schema([("id", pa.string()), ("hash", pa.string()), ("signature", pa.list_(pa.uint32()))])


INDEX_MANIFEST = "segments.json"


def index_segments(index: Path) -> list[dict]:
    """The index's segments in the order they were appended ({"name", "seq", "rows"}): the
    order is a sequence number in the index manifest, never a file time, so a copied or
    restored index behaves the same. An index from before the manifest is ordered by file time
    once, then recorded."""
    manifest = index / INDEX_MANIFEST
    if manifest.is_file():
        return sorted(json.loads(manifest.read_text())["segments"], key=lambda seg: seg["seq"])
    legacy = sorted(index.glob("*.parquet"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return [{"name": p.stem, "seq": i, "rows": pq.ParquetFile(p).metadata.num_rows} for i, p in enumerate(legacy)]


def live_index(index: Path, exclude_segment: str, exclude_ids: pa.Array, num_perm: int) -> pa.Table:
    """Kept documents of earlier batches, in id order (id, hash, signature[num_perm]); a batch's
    own documents are never its duplicates. A document a refresh replaced appears in several
    segments: the latest segment wins. Held as Arrow columns (about num_perm x 4 bytes a
    document), with no Python object per entry: the choice of live rows reads ids only."""
    segments = [seg for seg in index_segments(index) if seg["name"] != exclude_segment]
    keys = []
    for seg in segments:  # (id, seq << 32 | row): the largest per id is its latest entry
        ids = pq.read_table(index / f"{seg['name']}.parquet", columns=["id"]).column("id")
        keys.append(pa.table({"id": ids, "at": pa.array((seg["seq"] << 32) + np.arange(len(ids), dtype=np.int64))}))
    empty = pa.table({"id": pa.array([], pa.string()), "hash": pa.array([], pa.string()),
                      "signature": pa.FixedSizeListArray.from_arrays(pa.array([], pa.uint32()), num_perm)})
    if not keys:
        return empty
    latest = pa.concat_tables(keys).group_by("id").aggregate([("at", "max")])
    latest = latest.filter(pc.invert(pc.is_in(latest["id"], value_set=exclude_ids))).sort_by("id")
    at = latest["at_max"].to_numpy()
    position = np.arange(len(at))
    parts = []
    for seg in segments:
        mine = (at >> 32) == seg["seq"]
        if not mine.any():
            continue
        t = pq.read_table(index / f"{seg['name']}.parquet").take(pa.array(at[mine] & 0xFFFFFFFF))
        parts.append(pa.table({"id": t["id"], "hash": t["hash"], "signature": fixed_signatures(t["signature"], num_perm),
                               "position": position[mine]}))
    if not parts:
        return empty
    return pa.concat_tables(parts).sort_by("position").drop_columns(["position"])


def fixed_signatures(column, num_perm: int) -> pa.FixedSizeListArray:
    """Signatures as fixed-size lists; segments written with near-dedup off hold none (zeros)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    sigs = np.zeros((len(column), num_perm), dtype=np.uint32)
    full = pc.equal(pc.list_value_length(column), num_perm).fill_null(False).to_numpy(zero_copy_only=False)
    if full.any():
        sigs[full] = pc.list_flatten(column.filter(pa.array(full))).to_numpy().reshape(-1, num_perm)
    return pa.FixedSizeListArray.from_arrays(pa.array(sigs.ravel(), pa.uint32()), num_perm)


def read_index(
    index: Path, exclude_segment: str, exclude_ids: set[str], num_perm: int
) -> tuple[list[str], list[str], np.ndarray]:
    """live_index as Python lists and a signature matrix, for the one-process reference pass."""
    t = live_index(index, exclude_segment, pa.array(sorted(exclude_ids), pa.string()), num_perm)
    sigs = t["signature"].combine_chunks().values.to_numpy().reshape(-1, num_perm) if len(t) else np.zeros((0, num_perm), np.uint32)
    return t["id"].to_pylist(), t["hash"].to_pylist(), sigs


def write_index_segment(index: Path, name: str, ids, hashes, sigs) -> None:
    """Append a segment from in-memory columns (sigs None: no signatures)."""
    table = pa.table(
        {"id": ids, "hash": hashes, "signature": [list(map(int, s)) for s in sigs] if sigs is not None else [[]] * len(ids)},
        schema=INDEX_SCHEMA,
    )
    append_index_segment(index, name, [table])


def append_index_segment(index: Path, name: str, tables, schema: pa.Schema = INDEX_SCHEMA) -> None:
    """Append a segment written from `tables` (INDEX_SCHEMA, streamed one at a time): its file
    first, then its entry in the index manifest (under a lock, so two dedup runs appending to
    one index both land). A segment written again (a rerun of the same batch) keeps its place
    in the sequence."""
    import fcntl

    index.mkdir(parents=True, exist_ok=True)
    tmp = index / f".{name}.{uuid.uuid4().hex}.tmp"
    rows = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for table in tables:
            writer.write_table(table)
            rows += table.num_rows
    with open(index / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        segments = index_segments(index)
        os.replace(tmp, index / f"{name}.parquet")
        seq = next((seg["seq"] for seg in segments if seg["name"] == name), max((seg["seq"] for seg in segments), default=-1) + 1)
        segments = [seg for seg in segments if seg["name"] != name] + [{"name": name, "seq": seq, "rows": rows}]
        write_atomic(index / INDEX_MANIFEST, json.dumps({"segments": sorted(segments, key=lambda seg: seg["seq"])}, indent=1).encode())
