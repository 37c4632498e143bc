"""Document quality rules after Gopher (Rae et al. 2021), C4 (Raffel et al. 2020) and FineWeb
(Penedo et al. 2024). Each rule returns None to keep a document or the name of the
threshold it failed. Defaults are FineWeb's; the thresholds are config.
"""

from __future__ import annotations

import re

import numpy as np
from pydantic import BaseModel, ConfigDict

WORD = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]+")
_HAS_LETTER = re.compile(r"[^\W\d_]")
STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
BULLETS = ("•", "‣", "○", "▪", "▫", "-", "*", "●", "◦", "⁃")
END_PUNCT = (".", "!", "?", '"', "'", "”", "’", "…")
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


class GopherRepetitionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: dict[int, float] = {2: 0.2, 3: 0.18, 4: 0.16}
    dup_n_grams: dict[int, float] = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


class GopherQualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    max_non_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2


class C4Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    filter_no_terminal_punct: bool = False  # FineWeb turns this C4 rule off
    min_words_per_line: int = 3
    max_word_length: int = 1000
    min_num_sentences: int = 5
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class FineWebConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    line_punct_thr: float = 0.12
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


def words_of(text: str) -> list[str]:
    return WORD.findall(text)


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, characters in them), counting every repeat after the first."""
    seen: set[str] = set()
    count = chars = 0
    for x in items:
        if x in seen:
            count += 1
            chars += len(x)
        else:
            seen.add(x)
    return count, chars


def _gram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """One 64-bit hash per n-gram of word ids, all at once."""
    h = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = (h ^ ids[j : len(ids) - n + 1 + j]) * np.uint64(0x100000001B3) + np.uint64(j + 1)
    return h


def gopher_repetition(text: str, words: list[str], cfg: GopherRepetitionConfig) -> str | None:
    paragraphs = [p for p in re.split(r"\n{2,}", text.strip()) if p.strip()]
    n, chars = _duplicates(paragraphs)
    if paragraphs and n / len(paragraphs) > cfg.dup_para_frac:
        return "dup_para_frac"
    if text and chars / len(text) > cfg.dup_para_char_frac:
        return "dup_para_char_frac"
    lines = [x for x in text.split("\n") if x.strip()]
    n, chars = _duplicates(lines)
    if lines and n / len(lines) > cfg.dup_line_frac:
        return "dup_line_frac"
    if text and chars / len(text) > cfg.dup_line_char_frac:
        return "dup_line_char_frac"
    if not words:
        return None
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab) + 1) for w in words), dtype=np.uint64, count=len(words))
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    total_chars = int(lengths.sum()) or 1
    cum = np.concatenate(([0], np.cumsum(lengths)))
    for n_, thr in cfg.top_n_grams.items():
        if len(words) < n_:
            continue
        grams, first, counts = np.unique(_gram_hashes(ids, n_), return_index=True, return_counts=True)
        top = int(np.argmax(counts))
        if counts[top] > 1:
            i = first[top]
            gram_chars = int(cum[i + n_] - cum[i]) + n_ - 1  # the words and the spaces between them
            if gram_chars * int(counts[top]) / total_chars > thr:
                return f"top_{n_}_gram"
    for n_, thr in cfg.dup_n_grams.items():
        if len(words) < n_:
            continue
        hashes = _gram_hashes(ids, n_)
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        repeats = np.flatnonzero(first[inverse] < np.arange(len(hashes)))
        if not len(repeats):
            continue
        cover = np.zeros(len(words) + 1, dtype=np.int64)  # words inside a repeated n-gram, once each
        np.add.at(cover, repeats, 1)
        np.add.at(cover, repeats + n_, -1)
        dup_chars = int(lengths[np.cumsum(cover[:-1]) > 0].sum())
        if dup_chars / total_chars > thr:
            return f"duplicated_{n_}_gram"
    return None


def gopher_quality(text: str, words: list[str], cfg: GopherQualityConfig) -> str | None:
    alpha_words = [w for w in words if _HAS_LETTER.search(w)]
    n = len(alpha_words)
    if n < cfg.min_doc_words:
        return "min_doc_words"
    if n > cfg.max_doc_words:
        return "max_doc_words"
    avg = sum(len(w) for w in alpha_words) / n
    if avg < cfg.min_avg_word_length:
        return "min_avg_word_length"
    if avg > cfg.max_avg_word_length:
        return "max_avg_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n > cfg.max_symbol_word_ratio:
        return "max_symbol_word_ratio"
    lines = [x.strip() for x in text.split("\n") if x.strip()]
    if lines and sum(x.startswith(BULLETS) for x in lines) / len(lines) > cfg.max_bullet_lines_ratio:
        return "max_bullet_lines_ratio"
    if lines and sum(x.endswith(("...", "…")) for x in lines) / len(lines) > cfg.max_ellipsis_lines_ratio:
        return "max_ellipsis_lines_ratio"
    if words and n / len(words) < cfg.max_non_alpha_words_ratio:
        return "max_non_alpha_words_ratio"
    if sum(1 for w in alpha_words if w.lower() in STOP_WORDS) < cfg.min_stop_words:
        return "min_stop_words"
    return None


def c4_filter(text: str, cfg: C4Config) -> tuple[str | None, str]:
    """C4's rules: some drop the document, others drop lines. Returns (reason, kept text)."""
    low = text.lower()
    if cfg.filter_lorem_ipsum and "lorem ipsum" in low:
        return "lorem_ipsum", text
    if cfg.filter_curly_bracket and "{" in text:
        return "curly_bracket", text
    kept = []
    for line in text.split("\n"):
        s = line.strip()
        if not s:
            kept.append(line)
            continue
        lw = s.lower()
        if any(len(w) > cfg.max_word_length for w in s.split()):
            continue
        if cfg.filter_no_terminal_punct and not s.endswith(END_PUNCT):
            continue
        if len(s.split()) < cfg.min_words_per_line:
            continue
        if cfg.filter_javascript and "javascript" in lw:
            continue
        if cfg.filter_policy and any(p in lw for p in POLICY):
            continue
        kept.append(line)
    new = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    if not new:
        return "no_lines_left", text
    sentences = len(re.findall(r"[.!?]+(?:\s|$)", new))
    if sentences < cfg.min_num_sentences:
        return "min_num_sentences", text
    return None, new


def fineweb_filter(text: str, words: list[str], cfg: FineWebConfig) -> str | None:
    lines = [x.strip() for x in text.split("\n") if x.strip()]
    if not lines:
        return "empty"
    if sum(x.endswith(END_PUNCT) for x in lines) / len(lines) < cfg.line_punct_thr:
        return "line_punct_ratio"
    if sum(len(x) <= cfg.short_line_length for x in lines) / len(lines) > cfg.short_line_thr:
        return "short_line_ratio"
    _, dup_chars = _duplicates(lines)
    if dup_chars / max(1, len(text.replace("\n", ""))) > cfg.char_duplicates_ratio:
        return "char_dup_ratio"
    if words and text.count("\n") / len(words) > cfg.new_line_ratio:
        return "list_ratio"
    return None
