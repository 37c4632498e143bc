"""Scores and the baselines an honest report shows beside them (pure functions).

- classification: accuracy, per-class / macro / micro precision, recall, F1, the confusion matrix;
- language model: bits per byte from summed negative log-likelihood;
- compression baselines: `xz -9` alone and given the training text (compressed size of
  train+val minus that of train), and a unigram token model estimated on the training split.
"""

from __future__ import annotations

import lzma
import math

import numpy as np

XZ_PRESET = 9  # what `xz -9` uses


def classification_scores(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    tp = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(0).astype(float), confusion.sum(1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    n = int(confusion.sum())
    micro = float(tp.sum() / n) if n else 0.0  # single-label: micro P = micro R = micro F1 = accuracy
    seen = (actual > 0) | (predicted > 0)  # macro over the classes that occur in truth or prediction, as sklearn's default
    return {
        "examples": n,
        "accuracy": micro,
        "macro": {"precision": float(precision[seen].mean()), "recall": float(recall[seen].mean()), "f1": float(f1[seen].mean()),
                  "classes": int(seen.sum())},
        "micro": {"precision": micro, "recall": micro, "f1": micro},
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(actual[i])}
            for i, name in enumerate(labels)
        },
        "confusion": confusion.tolist(),
        "labels": list(labels),
    }


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    return nll_nats / math.log(2) / n_bytes


def xz_bytes(data: bytes) -> int:
    return len(lzma.compress(data, preset=XZ_PRESET))


def xz_baselines(train_text: str, val_text: str) -> dict:
    """Bits per byte of xz -9 on the val text alone, and given the train text (conditional)."""
    train, val = train_text.encode(), val_text.encode()
    alone = xz_bytes(val)
    both, base = xz_bytes(train + val), xz_bytes(train)
    return {"val_bytes": len(val), "xz_bpb": 8 * alone / len(val), "xz_conditional_bpb": 8 * max(both - base, 0) / len(val)}


def unigram_bpb(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int, val_bytes: int) -> float:
    """A unigram token model fitted on the train split (add-one smoothing), scored on val."""
    counts = np.bincount(train_tokens.astype(np.int64), minlength=vocab_size)[:vocab_size] + 1.0
    logp = np.log(counts / counts.sum())
    nll = -float(logp[val_tokens.astype(np.int64)].sum())
    return bits_per_byte(nll, val_bytes)
