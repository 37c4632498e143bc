"""examples: labelled data for fine-tuning -> tokenized train/val/test Arrow files.

Inputs: the documents, the tokenizer, the pretrain run (its context bounds an example's
length) and, when a person gave one, the labelled dataset (a copy of their CSV, JSONL or Parquet
file, formats/example_files.py). Without a file, for classification, labels derived from the crawl
itself: a regex on each page's URL (for the demo, the page's module family; classes smaller
than `min_class_size` merged into `other`). Splits are by a hash of the text (or document id),
so they are stable; a `split` column in the file overrides them.

Documented truncation: a classification text keeps its first `max_tokens` tokens. An SFT
example longer than the context keeps the end of its prompt and the start of its response,
the response getting at least half of the context. Rows with empty text are rejected to
`rejected.jsonl` with their reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Literal, NotRequired, TypedDict
from urllib.parse import urlsplit

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from formats.documents import doc_files
from formats.example_files import IGNORE, SPLITS, ExamplesError, labelled_file, read_labelled, write_examples
from formats.files import write_atomic
from formats.manifest import load_manifest
from formats.tokenizer import BOS, EOS, load_tokenizer
from tasks.orchestration import stage_task
from tasks.stage import Progress, no_progress

VERSION = 2  # 2: the context and the labelled file are inputs


class ExamplesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["classify", "sft"] = "classify"
    label_pattern: str = Field(r"^/([A-Za-z_][A-Za-z0-9_]*)(?:[./]|$)", description="derived labels: regex on the URL's path, group 1 (default: a pydoc page's top-level module)")
    min_class_size: int = Field(20, ge=1, description="derived labels: smaller classes become `other`")
    other_label: str = "other"
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    max_tokens: int = Field(0, ge=0, description="tokens per example; 0 = the pretrained model's context")
    seed: int = 0


def example_split(key: str, cfg: ExamplesConfig) -> str:
    u = int.from_bytes(hashlib.sha1(f"{cfg.seed}:{key}".encode()).digest()[:8], "big") / 2**64
    if u < cfg.test_fraction:
        return "test"
    return "val" if u < cfg.test_fraction + cfg.val_fraction else "train"


def rows_from_file(labelled: str, cfg: ExamplesConfig) -> list[dict]:
    source = load_manifest(labelled).stats["source"]  # errors name the file a person gave
    table = read_labelled(labelled_file(labelled), source)
    names = set(table.column_names)
    if cfg.kind == "classify":
        needed = [{"text", "label"}]
    else:
        needed = [{"prompt", "response"}, {"text"}]
    if not any(n <= names for n in needed):
        want = " or ".join("/".join(sorted(n)) for n in needed)
        raise ExamplesError(f"{source}: columns {sorted(names)} do not include the {cfg.kind} columns {want}")
    rows = table.to_pylist()
    if "split" in names:
        bad = {r["split"] for r in rows} - set(SPLITS)
        if bad:
            raise ExamplesError(f"{source}: column `split` holds {sorted(map(str, bad))}; use train, val or test")
    return rows


def rows_from_crawl(docs: str, cfg: ExamplesConfig) -> list[dict]:
    pattern = re.compile(cfg.label_pattern)
    rows = []
    for f in doc_files(docs):
        t = pq.read_table(f, columns=["id", "url", "text"])
        for doc_id, url, text in zip(*(t.column(c).to_pylist() for c in ("id", "url", "text"))):
            m = pattern.search(urlsplit(url or "").path)
            if m:
                rows.append({"id": doc_id, "url": url, "text": text, "label": m.group(1)})
    if not rows:
        raise ExamplesError(f"no document URL in {docs} matches examples.label_pattern {cfg.label_pattern!r}")
    sizes = Counter(r["label"] for r in rows)
    for r in rows:
        if sizes[r["label"]] < cfg.min_class_size:
            r["label"] = cfg.other_label
    return rows


def sft_labels(ids: list[int], prompt_len: int) -> list[int]:
    """Targets for SFT: the loss is taken on response tokens only, so every prompt position
    (including <s>) is IGNORE, whatever token it holds."""
    return [IGNORE] * prompt_len + list(ids[prompt_len:])


def truncate_sft(prompt: list[int], response: list[int], budget: int) -> tuple[list[int], list[int], bool]:
    """Fit [<s>] + prompt + response (+ </s>) into `budget` tokens: keep the prompt's end and the
    response's start, the response getting at least half the budget when both are long."""
    if 1 + len(prompt) + len(response) <= budget:
        return prompt, response, False
    keep_response = min(len(response), max(budget - 1 - len(prompt), budget // 2))
    keep_prompt = budget - 1 - keep_response
    return prompt[len(prompt) - keep_prompt :] if keep_prompt > 0 else [], response[:keep_response], True


class ExamplesInputs(TypedDict):
    documents: str  # for labels derived from URLs
    tokenizer: str
    pretrain: str  # the run whose context bounds an example
    labelled: NotRequired[str]  # a person's labelled file, taken in by the labelled stage


def examples(inputs: ExamplesInputs, cfg: ExamplesConfig, out: Path, progress: Progress = no_progress) -> dict:
    docs, tok, run = inputs["documents"], inputs["tokenizer"], inputs["pretrain"]
    labelled = [inputs["labelled"]] if inputs.get("labelled") else []
    context = load_manifest(run).stats["model"]["max_seq_len"]
    if cfg.max_tokens > context:
        raise ExamplesError(f"examples.max_tokens {cfg.max_tokens} exceeds the pretrained model's context {context}")
    max_tokens = cfg.max_tokens or context
    sp = load_tokenizer(tok)
    if labelled:
        rows = rows_from_file(labelled[0], cfg)
    elif cfg.kind == "classify":
        rows = rows_from_crawl(docs, cfg)
    else:
        raise ExamplesError("finetune.examples.path is required for SFT (a JSONL/Parquet of prompt/response)")
    text_key = "prompt" if cfg.kind == "sft" and rows and "prompt" in rows[0] else "text"
    rejected, kept = [], []
    for i, r in enumerate(rows):
        text = r.get(text_key)
        if not isinstance(text, str) or not text.strip():
            rejected.append({"row": i, "reason": f"empty {text_key}"})
        elif cfg.kind == "classify" and (r.get("label") is None or str(r["label"]).strip() == ""):
            rejected.append({"row": i, "reason": "empty label"})
        elif text_key == "prompt" and not (isinstance(r.get("response"), str) and r["response"].strip()):
            rejected.append({"row": i, "reason": "empty response"})
        else:
            kept.append(r)
    if not kept:
        raise ExamplesError(f"no usable examples: all {len(rows)} rows were rejected ({rejected[0]['reason'] if rejected else 'none read'})")
    for r in kept:
        r["split"] = r.get("split") or example_split(str(r.get("id") or r[text_key]), cfg)

    labels: list[str] = []
    if cfg.kind == "classify":
        labels = sorted({str(r["label"]) for r in kept})
        if len(labels) < 2:
            raise ExamplesError(f"classification needs at least 2 classes; the data holds only {labels}")
        train_labels = {str(r["label"]) for r in kept if r["split"] == "train"}
        missing = sorted(set(labels) - train_labels)
        if missing:
            raise ExamplesError(f"labels {missing} occur in val/test but not in the training split; add examples or merge them")
    index = {name: i for i, name in enumerate(labels)}

    budget = max_tokens + 1  # inputs and shifted targets
    truncated = 0
    columns = {s: {"id": [], "text": [], "input_ids": [], "labels": [], "label": []} for s in SPLITS}
    texts = [r[text_key] for r in kept]
    encoded = sp.encode(texts, num_threads=0)
    responses = sp.encode([r["response"] for r in kept], num_threads=0) if text_key == "prompt" else None
    for n, r in enumerate(kept):
        col = columns[r["split"]]
        col["id"].append(str(r.get("id") or n))
        col["text"].append(r[text_key])
        if cfg.kind == "classify":
            ids = [BOS] + encoded[n]
            truncated += len(ids) > max_tokens
            col["input_ids"].append(ids[:max_tokens])
            col["label"].append(index[str(r["label"])])
        elif responses is not None:
            prompt, response, cut = truncate_sft(encoded[n], responses[n] + [EOS], budget)
            truncated += cut
            ids = [BOS] + prompt + response
            col["input_ids"].append(ids)
            col["labels"].append(sft_labels(ids, 1 + len(prompt)))
        else:  # plain text: continued domain pretraining, loss on every token
            ids = ([BOS] + encoded[n] + [EOS])[:budget]
            truncated += len(encoded[n]) + 2 > budget
            col["input_ids"].append(ids)
            col["labels"].append(ids)
    counts = {}
    for split, col in columns.items():
        if not col["id"]:
            continue
        if cfg.kind == "classify":
            write_examples(out / f"{split}.arrow", col["id"], col["text"], col["input_ids"], label=col["label"])
            counts[split] = {labels[k]: c for k, c in sorted(Counter(col["label"]).items())}
        else:
            write_examples(out / f"{split}.arrow", col["id"], col["text"], col["input_ids"], labels=col["labels"])
            counts[split] = len(col["id"])
    if "train" not in counts:
        raise ExamplesError("no example reached the training split")
    write_atomic(out / "labels.json", json.dumps(labels).encode())
    if rejected:
        write_atomic(out / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in rejected).encode())
    progress(1, 1)
    return {"kind": cfg.kind, "max_tokens": max_tokens, "examples": len(kept), "rejected": len(rejected), "truncated": int(truncated),
            "classes": len(labels), "labels": labels, "per_split": counts,
            "source": load_manifest(labelled[0]).stats["source"] if labelled else f"derived from {load_manifest(docs).stage} URLs"}


examples_task = stage_task(examples)
