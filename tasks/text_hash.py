"""The normalized text that exact dedup compares: NFKC, lower case, words only, one space
between them (so whitespace and punctuation changes do not make a new text); and its hash."""

from __future__ import annotations

import re
import unicodedata

import xxhash

_WORDS = re.compile(r"\w+")


def normalize_for_hash(text: str) -> str:
    return " ".join(_WORDS.findall(unicodedata.normalize("NFKC", text).lower()))


def exact_hash(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(normalize_for_hash(text).encode())
