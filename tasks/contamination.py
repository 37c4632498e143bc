"""n-gram overlap between texts: how much of an evaluation text occurs verbatim in training text.

Words are lower-cased runs of letters and digits (as dedup normalizes them); an n-gram is n
consecutive words, hashed to 64 bits (xxhash), so a training corpus is a sorted array of
hashes and a lookup is a binary search. 13 words, as GPT-3's and dolma's decontamination use:
long enough that shared phrases of ordinary prose do not count, short enough to catch a copied
sentence.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

N = 13
_WORDS = re.compile(r"\w+")


def ngram_hashes(text: str, n: int = N) -> np.ndarray:
    """The 64-bit hashes of the text's word n-grams, in order (empty under n words)."""
    words = _WORDS.findall(text.lower())
    if len(words) < n:
        return np.zeros(0, np.uint64)
    return np.fromiter((xxhash.xxh3_64_intdigest(" ".join(words[i:i + n]).encode()) for i in range(len(words) - n + 1)),
                       dtype=np.uint64, count=len(words) - n + 1)


def ngram_index(texts, n: int = N) -> np.ndarray:
    """Every n-gram hash of `texts`, sorted and unique: the set lookups search."""
    parts = [ngram_hashes(t, n) for t in texts]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


def found(hashes: np.ndarray, index: np.ndarray) -> np.ndarray:
    """For each hash, whether the index holds it."""
    if not len(index) or not len(hashes):
        return np.zeros(len(hashes), bool)
    at = np.searchsorted(index, hashes).clip(max=len(index) - 1)
    return index[at] == hashes


def overlap(text: str, index: np.ndarray, n: int = N) -> tuple[int, int]:
    """(n-grams of `text` that the index holds, n-grams of `text`)."""
    h = ngram_hashes(text, n)
    return int(found(h, index).sum()), len(h)
