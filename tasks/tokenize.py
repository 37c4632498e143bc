"""tokenize: deduplicated documents -> token shards under train/ and val/ (the format:
formats/token_shards.py).

The split is by a hash of the document id, so a document keeps its split as the corpus grows;
then val documents that share too many 13-word n-grams with train text (repeated sections,
shared boilerplate) move to train (`decontaminate`), so the val loss measures generalization,
not copying. The manifest reports the val split's n-gram overlap with train before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import numpy as np
import pyarrow.parquet as pq

from formats.documents import doc_files
from formats.token_shards import split_of
from formats.tokenizer import load_tokenizer
from tasks.orchestration import stage_task
from tasks.stage import Progress, no_progress
from tasks.token_encoding import TokenizeConfig, encode_files, split_stats

VERSION = 3  # 3: val decontaminated


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


class TokenizeInputs(TypedDict):
    documents: str
    tokenizer: str


def tokenize(inputs: TokenizeInputs, cfg: TokenizeConfig, out: Path, progress: Progress = no_progress) -> dict:
    docs, tok = inputs["documents"], inputs["tokenizer"]
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


tokenize_task = stage_task(tokenize)
