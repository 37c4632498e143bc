"""clean: normalize text, identify the language, filter for quality, redact PII.

Every dropped document goes to dropped/ with the rule that dropped it (its text as the rule saw
it, PII redacted as in docs/), and the manifest counts documents per rule, so nothing leaves the
corpus silently.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from formats.documents import DOC_SCHEMA, doc_files
from tasks.executor import map_shards
from tasks.orchestration import stage_task
from tasks.pii import PIIConfig, redact
from tasks.quality import (
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    c4_filter,
    fineweb_filter,
    gopher_quality,
    gopher_repetition,
    words_of,
)
from tasks.stage import DocumentsInput, Progress, as_list, no_progress

VERSION = 2  # 2: dropped/ is redacted too

CLEAN_SCHEMA = DOC_SCHEMA.append(pa.field("language", pa.string())).append(
    pa.field("language_score", pa.float32())
)
DROPPED_SCHEMA = CLEAN_SCHEMA.append(pa.field("rule", pa.string()))
PII_KINDS = ("email", "ip", "phone")


class LanguageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    languages: list[str] = Field(default_factory=lambda: ["en"], description="empty keeps every language")
    min_score: float = Field(0.65, ge=0, le=1)


class CleanConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unicode_form: Literal["NFC", "NFKC"] = "NFC"
    min_chars: int = Field(1, ge=0)
    language: LanguageConfig = LanguageConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    c4: C4Config = C4Config()
    fineweb: FineWebConfig = FineWebConfig()
    pii: PIIConfig = PIIConfig()
    workers: int = Field(0, ge=0, description="worker processes; 0 = one per core")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str, form: str = "NFC") -> str:
    text = unicodedata.normalize(form, text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _SPACES.sub(" ", _CONTROL.sub("", text))
    lines = (line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> tuple[str, float]:
    lang, score = _identifier().classify(text[:5000])
    return lang, float(score)


def clean_document(text: str, cfg: CleanConfig) -> tuple[str | None, dict]:
    """(rule that drops the document, or None; details: cleaned text, language, PII counts)."""
    text = normalize_text(text, cfg.unicode_form)
    info: dict = {"text": text, "language": "", "language_score": 0.0, "pii": Counter()}
    if len(text) < max(1, cfg.min_chars):
        return "min_chars", info
    if cfg.language.enabled:
        lang, score = identify_language(text)
        info["language"], info["language_score"] = lang, score
        if cfg.language.languages and (lang not in cfg.language.languages or score < cfg.language.min_score):
            return "language", info
    words = words_of(text)
    if cfg.gopher_repetition.enabled and (r := gopher_repetition(text, words, cfg.gopher_repetition)):
        return f"gopher_repetition:{r}", info
    if cfg.gopher_quality.enabled and (r := gopher_quality(text, words, cfg.gopher_quality)):
        return f"gopher_quality:{r}", info
    if cfg.c4.enabled:
        r, text = c4_filter(text, cfg.c4)
        if r:
            return f"c4:{r}", info
        info["text"] = text
        words = words_of(text)
    if cfg.fineweb.enabled and (r := fineweb_filter(text, words, cfg.fineweb)):
        return f"fineweb:{r}", info
    info["text"], info["pii"] = redact(text, cfg.pii)
    return None, info


def clean_shard(args) -> dict:
    src, cfg, kept_out, dropped_out = args
    rows = pq.read_table(src).to_pylist()
    kept, dropped = [], []
    rules: Counter = Counter()
    pii: Counter = Counter()
    for row in rows:
        rule, info = clean_document(row["text"], cfg)
        row = {**row, "language": info["language"], "language_score": info["language_score"]}
        if rule:
            rules[rule] += 1
            # the text the rule judged, to audit it, with PII redacted: dropped/ is kept and shared like docs/
            dropped.append({**row, "text": redact(row["text"], cfg.pii)[0], "rule": rule})
        else:
            pii.update(info["pii"])
            kept.append({**row, "text": info["text"]})
    pq.write_table(pa.Table.from_pylist(kept, CLEAN_SCHEMA), kept_out, compression="zstd")
    pq.write_table(pa.Table.from_pylist(dropped, DROPPED_SCHEMA), dropped_out, compression="zstd")
    return {"in": len(rows), "kept": len(kept), "rules": dict(rules), "pii": dict(pii)}


def clean(inputs: DocumentsInput, cfg: CleanConfig, out: Path, progress: Progress = no_progress) -> dict:
    files = [f for ds in as_list(inputs["documents"]) for f in doc_files(ds)]
    (out / "docs").mkdir(exist_ok=True)
    (out / "dropped").mkdir(exist_ok=True)
    jobs = [
        (str(f), (str(f), cfg, str(out / "docs" / f"part-{i:05d}.parquet"), str(out / "dropped" / f"part-{i:05d}.parquet")))
        for i, f in enumerate(files)
    ]
    results, ran = map_shards(clean_shard, jobs, out, ["tasks.clean"], progress, workers=cfg.workers)
    rules: Counter = Counter()
    pii: Counter = Counter()
    for r in results:
        rules.update(r["rules"])
        pii.update(r["pii"])
    return {
        "shards": len(jobs),
        "shards_processed": ran,
        "documents_in": sum(r["in"] for r in results),
        "documents_out": sum(r["kept"] for r in results),
        "dropped": sum(rules.values()),
        "dropped_by_rule": dict(sorted(rules.items())),
        "pii_redacted": {k: pii.get(k, 0) for k in PII_KINDS},
        "pii_not_redacted_by_context": pii.get("ip_kept_by_context", 0),  # dotted numbers context showed are no address
    }


clean_task = stage_task(clean, sharded=True)
