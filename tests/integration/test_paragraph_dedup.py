"""paragraph_dedup on a corpus built to cover it: paragraphs shared by several documents stay in
the first (id order) only, short lines stay everywhere, a document that is mostly others' text is
dropped with its reason, and a second batch is deduplicated against the first through the index."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from formats.manifest import load_manifest
from tasks.paragraph_dedup import VERSION, ParagraphDedupConfig, paragraph_dedup
from tasks.stage import run_stage
from tests.corpus import corpus_dataset

SHARED = "Methods inherited from the base class are listed below, together with the attributes they read and write."
BOILER = "This page is part of the reference documentation; report mistakes in it on the issue tracker of the project."


def own(name: str, k: int) -> str:
    return f"The {name} module paragraph number {k} explains one thing that no other page of this corpus explains at all."


def texts() -> list[str]:
    return [
        "\n".join(["Overview", own("alpha", 1), SHARED, own("alpha", 2), BOILER]),  # doc 0000: first with both
        "\n".join(["Overview", own("beta", 1), SHARED, BOILER]),  # loses both shared paragraphs, keeps its own
        "\n".join([SHARED, BOILER, own("gamma", 1)[:40]]),  # nothing of its own but a short line: dropped
        "\n".join(["Overview", own("delta", 1), own("delta", 2)]),  # untouched
    ]


def read(dataset) -> dict[str, str]:
    return {r["id"]: r["text"] for f in sorted((Path(dataset) / "docs").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}


def test_shared_paragraphs_stay_in_the_first_document_only(tmp_path):
    docs = corpus_dataset(tmp_path, "p", texts())
    out = run_stage("paragraph_dedup", VERSION, paragraph_dedup, {"documents": docs}, ParagraphDedupConfig(max_removed_fraction=0.7), tmp_path)
    kept = read(out)
    assert kept["p-0000"] == texts()[0]  # the first keeps everything
    assert kept["p-0001"] == "\n".join(["Overview", own("beta", 1)])  # "Overview" is short: left alone everywhere
    assert "p-0002" not in kept and kept["p-0003"] == texts()[3]
    dropped = pq.read_table(Path(out) / "dropped.parquet").to_pylist()
    assert [d["id"] for d in dropped] == ["p-0002"] and "of its text is in other documents" in dropped[0]["reason"]
    removed = pq.read_table(Path(out) / "removed.parquet").to_pylist()
    assert {(r["id"], r["text"], r["kept_in"]) for r in removed} == {
        ("p-0001", SHARED, "p-0000"), ("p-0001", BOILER, "p-0000"), ("p-0002", SHARED, "p-0000"), ("p-0002", BOILER, "p-0000")}
    stats = load_manifest(out).stats
    assert stats["documents_in"] == 4 and stats["documents_out"] == 3 and stats["documents_dropped"] == 1
    assert stats["paragraphs_removed"] == 4 and stats["repeated_paragraphs"] == 2 and stats["index_paragraphs_before"] == 0
    assert stats["chars_removed"] == 2 * (len(SHARED) + len(BOILER))

    # max_repeats 3: a paragraph in 3 documents is no repeat to remove
    loose = run_stage("paragraph_dedup", VERSION, paragraph_dedup, {"documents": docs}, ParagraphDedupConfig(max_repeats=3, index_dir=str(tmp_path / "i3")), tmp_path)
    assert read(loose) == {f"p-{i:04d}": t for i, t in enumerate(texts())}


def test_a_later_batch_is_deduplicated_against_the_earlier_ones_through_the_index(tmp_path):
    first = corpus_dataset(tmp_path, "a", texts()[:1])
    run_stage("paragraph_dedup", VERSION, paragraph_dedup, {"documents": first}, ParagraphDedupConfig(), tmp_path)
    later = corpus_dataset(tmp_path, "b", ["\n".join([own("epsilon", 1), SHARED, own("epsilon", 2)])])
    out = run_stage("paragraph_dedup", VERSION, paragraph_dedup, {"documents": later}, ParagraphDedupConfig(), tmp_path)
    assert read(out)["b-0000"] == "\n".join([own("epsilon", 1), own("epsilon", 2)])
    removed = pq.read_table(Path(out) / "removed.parquet").to_pylist()
    assert [(r["text"], r["kept_in"]) for r in removed] == [(SHARED, "an earlier batch")]
    assert load_manifest(out).stats["index_paragraphs_before"] == 4  # the first batch's: its own two, SHARED and BOILER


def test_a_refreshed_document_that_kept_a_paragraph_keeps_it_again(tmp_path):
    """a-0000 kept SHARED, a-0001 lost it; a refresh replaces a-0000 (the page changed, SHARED is
    still on it): its new version keeps SHARED, or the corpus would have lost it altogether."""
    cfg = ParagraphDedupConfig(index_dir=str(tmp_path / "index"))
    batch1 = corpus_dataset(tmp_path / "r1", "a", ["\n".join([own("one", 1), SHARED]), "\n".join([own("two", 1), SHARED])])
    first = read(run_stage("paragraph_dedup", VERSION, paragraph_dedup, {"documents": batch1}, cfg, tmp_path / "r1"))
    assert SHARED in first["a-0000"] and SHARED not in first["a-0001"]
    batch2 = corpus_dataset(tmp_path / "r2", "a", ["\n".join([own("one", 1), own("one", 3), SHARED])])  # a-0000, changed
    second = read(run_stage("paragraph_dedup", VERSION, paragraph_dedup, {"documents": batch2}, cfg, tmp_path / "r2"))
    assert SHARED in second["a-0000"] and own("one", 1) in second["a-0000"]  # its own earlier paragraph too: it replaced itself
    batch3 = corpus_dataset(tmp_path / "r3", "b", ["\n".join([own("three", 1), SHARED])])  # a new page: SHARED is kept elsewhere
    third = read(run_stage("paragraph_dedup", VERSION, paragraph_dedup, {"documents": batch3}, cfg, tmp_path / "r3"))
    assert third["b-0000"] == own("three", 1)
