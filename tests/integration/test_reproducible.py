"""The demo's data is reproducible by construction: builtin:pydoc crawled twice, on fresh roots,
by a crawler fetching 8 pages at once, each time on whatever port the server got, gives the same
documents after dedup, the same tokenizer and the same token shards, bit for bit. Only what
identifies a fetch differs (its time, its WARC record id). And the same WARC files in give
bit-equal datasets out."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from flows.llmill_config import load_config
from formats.manifest import load_manifest
from tasks.clean import VERSION as CLEAN_VERSION
from tasks.clean import clean
from tasks.crawl import VERSION as CRAWL_VERSION
from tasks.crawl import crawl
from tasks.dedup import VERSION as DEDUP_VERSION
from tasks.dedup import dedup
from tasks.extract import VERSION as EXTRACT_VERSION
from tasks.extract import extract
from tasks.ingest import VERSION as INGEST_VERSION
from tasks.ingest import IngestConfig, ingest
from tasks.pydoc_site import BASE
from tasks.stage import run_stage
from tasks.tokenize import VERSION as TOKENIZE_VERSION
from tasks.tokenize import tokenize
from tasks.train_tokenizer import VERSION as TOKENIZER_VERSION
from tasks.train_tokenizer import train_tokenizer

FETCH_IDENTITY = {"fetched_at", "warc_record_id"}  # when and as which WARC record a page was fetched


def demo_data(root: Path, pydoc_port: int) -> dict[str, str]:
    cfg = load_config()
    crawl_cfg = cfg.crawl.model_copy(update={"max_pages": 60, "concurrency": 8, "pydoc_port": pydoc_port})
    assert crawl_cfg.seeds == ["builtin:pydoc"]
    raw = run_stage("crawl", CRAWL_VERSION, crawl, {}, crawl_cfg, root, resumable=True)
    docs = run_stage("extract", EXTRACT_VERSION, extract, {"raw": [str(raw)]}, cfg.extract, root, sharded=True)
    cleaned = run_stage("clean", CLEAN_VERSION, clean, {"documents": str(docs)}, cfg.clean, root, sharded=True)
    deduped = run_stage("dedup", DEDUP_VERSION, dedup, {"documents": str(cleaned)}, cfg.dedup, root, sharded=True)
    tokenizer = run_stage("train_tokenizer", TOKENIZER_VERSION, train_tokenizer, {"documents": str(deduped)},
                          cfg.tokenizer.model_copy(update={"vocab_size": 1024}), root)
    shards = run_stage("tokenize", TOKENIZE_VERSION, tokenize, {"documents": str(deduped), "tokenizer": str(tokenizer)}, cfg.tokenize, root)
    return {"raw": str(raw), "docs": str(docs), "clean": str(cleaned), "dedup": str(deduped), "tokenizer": str(tokenizer),
            "shards": str(shards)}


def rows(dataset: str, folder: str = "docs") -> list[dict]:
    """The dataset's documents in file and row order, without what identifies their fetch."""
    out = []
    for f in load_manifest(dataset).files:
        if f.path.startswith(folder + "/") and f.path.endswith(".parquet"):
            out += [{k: v for k, v in r.items() if k not in FETCH_IDENTITY} for r in pq.read_table(Path(dataset) / f.path).to_pylist()]
    return out


def stats(dataset: str) -> dict:
    return {k: v for k, v in load_manifest(dataset).stats.items() if k not in ("seconds", "index")}


def files(dataset: str) -> dict[str, str]:
    return {f.path: f.sha256 for f in load_manifest(dataset).files}


def test_builtin_pydoc_twice_on_fresh_roots_gives_the_same_corpus_tokenizer_and_token_shards(tmp_path):
    from tests.helpers import free_port

    first, second = demo_data(tmp_path / "a", 0), demo_data(tmp_path / "b", free_port())
    pages = load_manifest(first["raw"]).stats["pages"]
    assert pages == 60 == load_manifest(second["raw"]).stats["pages"]
    for stage in ("docs", "clean", "dedup"):  # every column but the fetch's identity, in the same order
        assert rows(first[stage]) == rows(second[stage]), stage
    assert rows(first["clean"], "dropped") == rows(second["clean"], "dropped")
    kept = rows(first["dedup"])
    assert len(kept) >= 30 and all(r["url"].startswith(BASE) for r in kept)  # the fixed name, never the port
    for stage in ("docs", "clean", "dedup"):  # the same counts (the index's path is the root's)
        assert stats(first[stage]) == stats(second[stage]), stage
    assert files(first["tokenizer"]) == files(second["tokenizer"])  # tokenizer.model, bit for bit
    assert files(first["shards"]) == files(second["shards"])  # every token shard and its document index

    # the same WARC files in: bit-equal datasets out (ingest reads them in place)
    warcs = sorted(str(Path(first["raw"]) / f.path) for f in load_manifest(first["raw"]).files if f.path.endswith(".warc.gz"))
    cfg = load_config()
    out = []
    for name in ("c", "d"):
        raw = run_stage("ingest", INGEST_VERSION, ingest, {}, IngestConfig(paths=warcs), tmp_path / name)
        docs = run_stage("extract", EXTRACT_VERSION, extract, {"raw": [str(raw)]}, cfg.extract, tmp_path / name, sharded=True)
        cleaned = run_stage("clean", CLEAN_VERSION, clean, {"documents": str(docs)}, cfg.clean, tmp_path / name, sharded=True)
        out.append([files(d) for d in (raw, docs, cleaned)])
    assert out[0] == out[1]



def test_pydoc_pages_do_not_show_where_the_checkout_or_its_venv_lie():
    """The sys page renders the server's argv, executable and __main__: two clones of llmill
    (or one moved) must serve the same pages."""
    import sys
    import urllib.request

    from tasks.pydoc_site import serve_pydoc

    checkout = str(Path(__file__).resolve().parents[2])
    with serve_pydoc() as base:
        page = urllib.request.urlopen(base + "sys.html", timeout=30).read().decode()
    assert "orig_argv" in page and "pydoc_site.py" in page
    assert checkout not in page
    if sys.prefix != sys.base_prefix:  # run from a venv: its path is not on the page either
        assert sys.prefix not in page
