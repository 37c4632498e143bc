"""Small real corpora for tests: the Python library reference sources from python3.11-doc."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from tasks.stage import run_stage
from tests.helpers import PYDOCS


def library_texts(n: int, max_chars: int = 12_000) -> list[str]:
    files = sorted((PYDOCS / "_sources" / "library").glob("*.rst.txt"))
    texts = []
    for f in files:
        text = "\n".join(line.rstrip() for line in f.read_text(errors="replace").splitlines()).strip()
        if len(text) > 2000:
            texts.append(text[:max_chars])
        if len(texts) == n:
            break
    return texts


class CorpusName(BaseModel):
    name: str


def corpus_dataset(root: Path, name: str, texts: list[str]) -> str:
    """A documents dataset (like dedup's output) holding `texts`."""

    def write(inputs, cfg, out, progress):
        (out / "docs").mkdir()
        rows = [{"id": f"{name}-{i:04d}", "url": f"http://corpus/{name}/{i}", "text": t} for i, t in enumerate(texts)]
        schema = pa.schema([("id", pa.string()), ("url", pa.string()), ("text", pa.string())])
        pq.write_table(pa.Table.from_pylist(rows, schema), out / "docs" / "part-00000.parquet")
        return {"documents_out": len(rows)}

    return str(run_stage("corpus", 1, write, {}, CorpusName(name=name), root))


def tokenized(root: Path, n_docs: int, vocab_size: int = 512, val_fraction: float = 0.1) -> tuple[str, str, str]:
    """(documents, tokenizer, shards) datasets built from `n_docs` library sources."""
    from tasks.token_encoding import TokenizeConfig
    from tasks.tokenize import tokenize
    from tasks.train_tokenizer import TokenizerConfig, train_tokenizer

    docs = corpus_dataset(root, "lib", library_texts(n_docs))
    tok = run_stage("train_tokenizer", 1, train_tokenizer, {"documents": docs}, TokenizerConfig(vocab_size=vocab_size), root)
    shards = run_stage("tokenize", 1, tokenize, {"documents": docs, "tokenizer": str(tok)}, TokenizeConfig(val_fraction=val_fraction), root)
    return docs, str(tok), str(shards)


SECTIONS = {"library": "library", "c-api": "c-api", "howto": "guide", "tutorial": "guide", "faq": "guide", "using": "guide",
            "extending": "guide", "reference": "guide", "whatsnew": "whatsnew"}


def section_examples(per_class: int = 60, max_chars: int = 1500) -> list[dict]:
    """A real labelled set: python3.11-doc source pages labelled by their section of the docs."""
    rows: dict[str, list[dict]] = {}
    for folder, label in SECTIONS.items():
        for f in sorted((PYDOCS / "_sources" / folder).glob("*.rst.txt")):
            text = " ".join(f.read_text(errors="replace").split())[:max_chars]
            if len(text) > 200 and len(rows.setdefault(label, [])) < per_class:
                rows[label].append({"id": f"{folder}/{f.name}", "text": text, "label": label})
    return [r for label in sorted(rows) for r in rows[label]]


def write_examples_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
