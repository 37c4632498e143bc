"""tokenize: deduplicated documents -> token shards under train/ and val/ (the format:
formats/token_shards.py).

The split is by a hash of the document id, so a document keeps its split as the corpus grows;
then val documents that share too many 13-word n-grams with train text (repeated sections,
shared boilerplate) move to train (`decontaminate`), so the val loss measures generalization,
not copying. The manifest reports the val split's n-gram overlap with train before and after.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq
from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from formats.documents import doc_files
from formats.token_shards import SPLITS, split_of, token_dtype, write_token_shard
from formats.tokenizer import EOS, load_tokenizer
from model.config import usable_cpus
from tasks.orchestration import STAGE_CACHE, prefect_stage
from tasks.stage import Progress, no_progress

VERSION = 3  # 3: val decontaminated


class DecontaminateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    ngram: int = Field(13, ge=5, le=50, description="words per n-gram (GPT-3 and dolma use 13)")
    max_overlap: float = Field(0.2, ge=0, le=1, description="a val document with a larger share of its n-grams in train text leaves val")
    action: Literal["move", "drop"] = Field("move", description="move: to train; drop: out of the dataset")


class TokenizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    val_fraction: float = Field(0.05, ge=0, lt=1)
    seed: int = 0
    threads: int = Field(0, ge=0, description="sentencepiece encoder threads; 0 = one per core")
    decontaminate: DecontaminateConfig = DecontaminateConfig()


CHUNK_DOCS = 256  # documents per encode call: small enough to overlap, large enough to keep threads busy


def flatten(encoded: list[list[int]], dtype) -> np.ndarray:
    """Documents' ids, each followed by </s>, as one flat array (C-level iteration, no slices)."""
    total = sum(map(len, encoded)) + len(encoded)
    return np.fromiter(chain.from_iterable(chain(e, (EOS,)) for e in encoded), dtype=dtype, count=total)


def encode_shard(sp, src: Path, index: int, out: Path, cfg: TokenizeConfig, threads: int, prefix: str = "",
                 moved: dict[str, str] | None = None) -> dict:
    """`moved`: doc id -> the split decontamination gave it instead of its hash's ("train"),
    or "drop"."""
    t = pq.read_table(src, columns=["id", "text"])
    ids, texts = t.column("id").to_pylist(), t.column("text").to_pylist()
    dtype = token_dtype(sp.get_piece_size())
    moved = moved or {}
    split = [moved.get(d) or split_of(d, cfg.seed, cfg.val_fraction) for d in ids]
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
        stats[s] = write_token_shard(out / s, f"{prefix}part-{index:05d}", flat, dtype, docs[s])
    return stats


def encode_files(sp, files: list[Path], out: Path, cfg: TokenizeConfig, progress: Progress, prefix: str = "",
                 moved: dict[str, str] | None = None) -> dict:
    """Encode document files into shards under out/train and out/val; totals per split."""
    for split in SPLITS:
        (out / split).mkdir(exist_ok=True)
    cores = cfg.threads or usable_cpus()
    workers = min(len(files), 2) or 1  # two shards in flight keep the encoder threads busy
    totals = {s: {"documents": 0, "tokens": 0, "bytes": 0} for s in SPLITS}
    done = 0
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(encode_shard, sp, f, i, out, cfg, max(1, cores // workers), prefix, moved) for i, f in enumerate(files)]
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


def decontaminate(files: list[Path], cfg: TokenizeConfig) -> tuple[dict[str, str], dict]:
    """Val documents whose n-grams occur in train text too often leave val: {doc id: "train" or
    "drop"}, and the figures. A document moved to train adds its n-grams to train, so the check
    repeats until no document moves (a fixed point, the same whatever the file order)."""
    from tasks.contamination import found, ngram_hashes

    d = cfg.decontaminate
    train_parts, val = [], {}
    for f in files:
        t = pq.read_table(f, columns=["id", "text"])
        for doc, text in zip(t.column("id").to_pylist(), t.column("text").to_pylist()):
            h = ngram_hashes(text, d.ngram)
            if split_of(doc, cfg.seed, cfg.val_fraction) == "val":
                val[doc] = h
            else:
                train_parts.append(h)
    index = np.unique(np.concatenate(train_parts)) if train_parts else np.zeros(0, np.uint64)

    def rate(docs) -> float:
        hit = sum(int(found(val[k], index).sum()) for k in docs)
        total = sum(len(val[k]) for k in docs)
        return hit / total if total else 0.0

    before = rate(val)
    moved: dict[str, str] = {}
    while True:
        over = sorted(k for k in val if k not in moved and len(val[k]) and found(val[k], index).mean() > d.max_overlap)
        if not over:
            break
        for k in over:
            moved[k] = "train" if d.action == "move" else "drop"
        if d.action == "move":
            index = np.union1d(index, np.concatenate([val[k] for k in over]))
    kept = [k for k in val if k not in moved]
    return moved, {"ngram": d.ngram, "max_overlap": d.max_overlap, "action": d.action, "val_documents_before": len(val),
                   "val_ngram_rate_before": round(before, 4), "val_ngram_rate_after": round(rate(kept), 4),
                   f"val_documents_{'moved_to_train' if d.action == 'move' else 'dropped'}": len(moved)}


def tokenize(inputs: list[str], cfg: TokenizeConfig, out: Path, progress: Progress = no_progress) -> dict:
    docs, tok = inputs
    sp = load_tokenizer(tok)
    files = doc_files(docs)
    moved, contamination = decontaminate(files, cfg) if cfg.decontaminate.enabled and cfg.val_fraction > 0 else ({}, None)
    totals = encode_files(sp, files, out, cfg, progress, moved=moved)
    if totals["train"]["documents"] == 0:
        raise ValueError("tokenize: the corpus is empty; no document reached the train split")
    stats = split_stats(sp, totals, len(files))
    if contamination is not None:
        stats["decontamination"] = contamination
    return stats


@task(name="tokenize", cache_policy=STAGE_CACHE, persist_result=True, retries=1)
def tokenize_task(inputs: list[str], cfg: TokenizeConfig, root: str) -> str:
    return prefect_stage("tokenize", VERSION, tokenize, inputs, cfg, root)
