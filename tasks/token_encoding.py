"""Encoding documents into token shards (formats/token_shards.py), shared by tokenize (a whole
corpus) and append_tokens (a refresh's new documents): the same config, split and encoder, so a
refreshed version's tokens equal a full rebuild's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from formats.token_shards import SPLITS, split_of, token_dtype, write_token_shard
from formats.tokenizer import EOS
from model.config import usable_cpus
from tasks.stage import Progress


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
