"""Token shards: the tokenize dataset's format, written by tokenize (and append_tokens) and read
by the trainer and the evaluation.

Under `train/` and `val/`, each shard is a pair of uncompressed Arrow IPC files, so it memory-maps:
  part-NNNNN.arrow       one flat `tokens` column (uint16 when the vocabulary fits, else
                         uint32), every document followed by </s>
  part-NNNNN.docs.arrow  doc_id, start, length, bytes: where each document's tokens lie
                         and how many UTF-8 bytes of text they stand for
A document's split is a hash of its id (and the seed), so it keeps its split as the corpus grows.
A refreshed version (append_tokens) lists the shards of the versions before it plus its own, and
which of their documents it retired (superseded by a newer text): readers skip those.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from formats.files import write_ipc

SPLITS = ("train", "val")
RETIRED = "retired.parquet"
RETIRED_SCHEMA = pa.schema([("shard", pa.string()), ("doc_id", pa.string()), ("split", pa.string()),
                            ("tokens", pa.int64()), ("bytes", pa.int64()), ("reason", pa.string()), ("version", pa.int32())])


def split_of(doc_id: str, seed: int, val_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha1(f"{seed}:{doc_id}".encode()).digest()[:8], "big")
    return "val" if h / 2**64 < val_fraction else "train"


def token_dtype(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= 2**16 else pa.uint32()


def write_token_shard(split_dir: Path, name: str, tokens: np.ndarray, dtype: pa.DataType, docs: list[tuple[str, int, int]]) -> dict:
    """`name`.arrow and `name`.docs.arrow under `split_dir`: `tokens` (each document's ids and its
    </s>, in order) and `docs` as (doc id, tokens without </s>, text bytes). Its split's totals."""
    lengths = np.array([n for _, n, _ in docs], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1])) if len(lengths) else np.zeros(0, np.int64)
    write_ipc(split_dir / f"{name}.arrow", pa.table({"tokens": pa.array(tokens, type=dtype)}))
    write_ipc(
        split_dir / f"{name}.docs.arrow",
        pa.table({"doc_id": pa.array([d for d, _, _ in docs], pa.string()), "start": pa.array(starts, pa.int64()),
                  "length": pa.array(lengths, pa.int32()), "bytes": pa.array([b for _, _, b in docs], pa.int64())}),
    )
    return {"documents": len(lengths), "tokens": int(len(tokens)), "bytes": sum(b for _, _, b in docs)}


class ShardError(ValueError):
    pass


def open_tokens(path: Path) -> np.ndarray:
    """The flat token column of one shard, memory-mapped (zero-copy)."""
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        column = reader.read_all().column("tokens")
        if column.num_chunks == 0:  # a shard whose documents all went to the other split
            return np.zeros(0, dtype=column.type.to_pandas_dtype())
        if column.num_chunks != 1:
            column = pa.chunked_array([pa.concat_arrays(column.chunks)])
        return column.chunk(0).to_numpy(zero_copy_only=True)
    except (pa.ArrowInvalid, pa.ArrowKeyError, KeyError, OSError) as e:
        raise ShardError(f"{path}: not a readable token shard ({e})") from None


def write_retired(out: Path, rows: list[dict]) -> None:
    """A refreshed version's `retired.parquet`: every document retired so far, each with the shard
    (relative to the root) that holds it, why (changed, gone) and in which version."""
    pq.write_table(pa.Table.from_pylist(rows, RETIRED_SCHEMA), out / RETIRED)


def read_retired(dataset: str | Path) -> list[dict]:
    path = Path(dataset) / RETIRED
    return pq.read_table(path).to_pylist() if path.exists() else []


def split_shards(dataset: str | Path, split: str) -> list[tuple[Path, frozenset[str]]]:
    """The token shard files of one split, each with the ids of documents retired from it.

    A `tokenize` dataset holds its shards itself. A refreshed version (`append_tokens`) lists,
    relative to the datasets' root, the shards of the versions before it and its own, and
    which of their documents a later version superseded; earlier versions stay readable.
    """
    dataset = Path(dataset)
    manifest = dataset / "manifest.json"
    listed = json.loads(manifest.read_text())["stats"].get("shard_files") if manifest.is_file() else None
    if listed is None:
        files = sorted(p for p in (dataset / split).glob("part-*.arrow") if not p.name.endswith(".docs.arrow"))
        return [(f, frozenset()) for f in files]
    retired: dict[str, set[str]] = {}
    if (dataset / RETIRED).exists():
        table = pq.read_table(dataset / RETIRED, columns=["shard", "doc_id"])
        for shard, doc in zip(table.column("shard").to_pylist(), table.column("doc_id").to_pylist()):
            retired.setdefault(shard, set()).add(doc)
    root = dataset.parent.parent
    return [(root / rel, frozenset(retired.get(rel, ()))) for rel in listed[split]]


def doc_index(tokens_file: Path) -> pa.Table:
    """doc_id, start, length (and bytes) of each document in a token shard."""
    return pa.ipc.open_file(pa.memory_map(str(tokens_file.with_suffix(".docs.arrow")), "r")).read_all()


def live_documents(tokens_file: Path, retired: frozenset[str] = frozenset()) -> list[tuple[str, int, int]]:
    """(doc id, start, length) of a shard's documents that no later version retired."""
    index = doc_index(tokens_file)
    rows = zip(index.column("doc_id").to_pylist(), index.column("start").to_pylist(), index.column("length").to_pylist())
    return [r for r in rows if r[0] not in retired]


def live_tokens(tokens_file: Path, retired: frozenset[str] = frozenset()) -> np.ndarray:
    """A shard's tokens without its retired documents: memory-mapped when none is retired."""
    tokens = open_tokens(tokens_file)
    if not retired:
        return tokens
    spans = [tokens[s : s + n + 1] for _, s, n in live_documents(tokens_file, retired)]  # each with its </s>
    return np.concatenate(spans) if spans else tokens[:0]


def split_tokens(shards: str | Path, split: str) -> np.ndarray:
    """The split's live tokens as one stream, in shard order."""
    parts = [live_tokens(f, retired) for f, retired in split_shards(shards, split)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def split_docs(shards: str | Path, split: str, sp) -> list[str]:
    """The split's documents, decoded from the shards in stream order."""
    docs = []
    for f, retired in split_shards(shards, split):
        tokens = open_tokens(f)
        docs += [sp.decode(tokens[start : start + length].tolist()) for _, start, length in live_documents(f, retired)]
    return docs
