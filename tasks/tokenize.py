"""tokenize: deduplicated documents -> Arrow IPC token shards under train/ and val/.

Each shard is a pair of uncompressed Arrow IPC files, so it memory-maps:
  part-NNNNN.arrow       one flat `tokens` column (uint16 when the vocabulary fits, else
                         uint32), every document followed by </s>
  part-NNNNN.docs.arrow  doc_id, start, length, bytes: where each document's tokens lie
                         and how many UTF-8 bytes of text they stand for
The split is by a hash of the document id, so a document keeps its split as the corpus grows.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from tasks.clean import doc_files
from model.config import usable_cpus
from tasks.orchestration import STAGE_CACHE, prefect_stage
from tasks.stage import Progress, load_manifest, no_progress
from tasks.train_tokenizer import EOS, MODEL_FILE

VERSION = 2
SPLITS = ("train", "val")


class TokenizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    val_fraction: float = Field(0.05, ge=0, lt=1)
    seed: int = 0
    threads: int = Field(0, ge=0, description="sentencepiece encoder threads; 0 = one per core")


def split_of(doc_id: str, cfg: TokenizeConfig) -> str:
    h = int.from_bytes(hashlib.sha1(f"{cfg.seed}:{doc_id}".encode()).digest()[:8], "big")
    return "val" if h / 2**64 < cfg.val_fraction else "train"


def token_dtype(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= 2**16 else pa.uint32()


def write_ipc(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def tokenizer_path(dataset: str) -> Path:
    return Path(dataset) / MODEL_FILE


CHUNK_DOCS = 256  # documents per encode call: small enough to overlap, large enough to keep threads busy


def flatten(encoded: list[list[int]], dtype) -> np.ndarray:
    """Documents' ids, each followed by </s>, as one flat array (C-level iteration, no slices)."""
    total = sum(map(len, encoded)) + len(encoded)
    return np.fromiter(chain.from_iterable(chain(e, (EOS,)) for e in encoded), dtype=dtype, count=total)


def encode_shard(sp, src: Path, index: int, out: Path, cfg: TokenizeConfig, threads: int, prefix: str = "") -> dict:
    t = pq.read_table(src, columns=["id", "text"])
    ids, texts = t.column("id").to_pylist(), t.column("text").to_pylist()
    dtype = token_dtype(sp.get_piece_size())
    split = [split_of(d, cfg) for d in ids]
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    docs: dict[str, list[tuple[str, int, int]]] = {s: [] for s in SPLITS}  # (doc id, tokens, text bytes)
    chunks = [range(i, min(i + CHUNK_DOCS, len(ids))) for i in range(0, len(ids), CHUNK_DOCS)]
    # sentencepiece releases the GIL while it encodes, so the next chunk encodes while this one is flattened
    with ThreadPoolExecutor(1) as encoder:
        def submit(rows: range):
            return encoder.submit(sp.encode, [texts[i] for i in rows], num_threads=threads)

        pending = submit(chunks[0]) if chunks else None
        for k, rows in enumerate(chunks):
            encoded = pending.result()
            if k + 1 < len(chunks):
                pending = submit(chunks[k + 1])
            for s in SPLITS:
                mine = [(i, e) for i, e in zip(rows, encoded) if split[i] == s]
                parts[s].append(flatten([e for _, e in mine], dtype.to_pandas_dtype()))
                docs[s] += [(ids[i], len(e), len(texts[i].encode("utf-8"))) for i, e in mine]
    stats = {}
    for s in SPLITS:
        flat = np.concatenate(parts[s]) if parts[s] else np.zeros(0, dtype.to_pandas_dtype())
        lengths = np.array([n for _, n, _ in docs[s]], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1])) if len(lengths) else np.zeros(0, np.int64)
        name = f"{prefix}part-{index:05d}"
        write_ipc(out / s / f"{name}.arrow", pa.table({"tokens": pa.array(flat, type=dtype)}))
        write_ipc(
            out / s / f"{name}.docs.arrow",
            pa.table({"doc_id": pa.array([d for d, _, _ in docs[s]], pa.string()), "start": pa.array(starts, pa.int64()),
                      "length": pa.array(lengths, pa.int32()), "bytes": pa.array([b for _, _, b in docs[s]], pa.int64())}),
        )
        stats[s] = {"documents": len(lengths), "tokens": int(len(flat)), "bytes": sum(b for _, _, b in docs[s])}
    return stats


def load_tokenizer(tok: str):
    import sentencepiece as spm

    if load_manifest(tok).stage != "train_tokenizer":
        raise ValueError(f"tokenize: {tok} is not a tokenizer dataset")
    return spm.SentencePieceProcessor(model_file=str(tokenizer_path(tok)))


def encode_files(sp, files: list[Path], out: Path, cfg: TokenizeConfig, progress: Progress, prefix: str = "") -> dict:
    """Encode document files into shards under out/train and out/val; totals per split."""
    for split in SPLITS:
        (out / split).mkdir(exist_ok=True)
    cores = cfg.threads or usable_cpus()
    workers = min(len(files), 2) or 1  # two shards in flight keep the encoder threads busy
    totals = {s: {"documents": 0, "tokens": 0, "bytes": 0} for s in SPLITS}
    done = 0
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(encode_shard, sp, f, i, out, cfg, max(1, cores // workers), prefix) for i, f in enumerate(files)]
        for fut in futures:
            for split, st in fut.result().items():
                for k, v in st.items():
                    totals[split][k] += v
            done += 1
            progress(done, len(files))
    return totals


def split_stats(sp, totals: dict, shards: int) -> dict:
    return {
        "vocab_size": sp.get_piece_size(),
        "dtype": str(token_dtype(sp.get_piece_size())),
        "tokens": {s: totals[s]["tokens"] for s in SPLITS},
        "documents": {s: totals[s]["documents"] for s in SPLITS},
        "bytes": {s: totals[s]["bytes"] for s in SPLITS},
        "shards": shards,
    }


def tokenize(inputs: list[str], cfg: TokenizeConfig, out: Path, progress: Progress = no_progress) -> dict:
    docs, tok = inputs
    sp = load_tokenizer(tok)
    files = doc_files(docs)
    totals = encode_files(sp, files, out, cfg, progress)
    if totals["train"]["documents"] == 0:
        raise ValueError("tokenize: the corpus is empty; no document reached the train split")
    return split_stats(sp, totals, len(files))


@task(name="tokenize", cache_policy=STAGE_CACHE, persist_result=True, retries=1)
def tokenize_task(inputs: list[str], cfg: TokenizeConfig, root: str) -> str:
    return prefect_stage("tokenize", VERSION, tokenize, inputs, cfg, root)
