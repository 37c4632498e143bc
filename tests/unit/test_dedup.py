"""Dedup quality on real prose with planted near-duplicates, and the persisted index."""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from formats.manifest import load_manifest
from tasks.dedup import DedupConfig, Signer, dedup
from tasks.stage import run_stage
from tasks.text_hash import exact_hash
from tests.helpers import PYDOCS, reference_duplicates

SOURCES = PYDOCS / "_sources" / "library"


def originals(n: int, offset: int = 0) -> list[str]:
    """Distinct real documents: the first 300-900 words of the library reference sources."""
    texts = []
    for f in sorted(SOURCES.glob("*.rst.txt"))[offset:]:
        words = f.read_text(errors="replace").split()
        if len(words) >= 400:
            texts.append(" ".join(words[:900]))
        if len(texts) == n:
            break
    return texts


def perturb(text: str, frac: float, rng: random.Random) -> str:
    """Change `frac` of the words in one to three contiguous edits, as near-duplicate pages differ."""
    words = text.split()
    budget = max(1, int(len(words) * frac))
    spans = rng.randint(1, 3)
    for k in range(spans):
        size = budget // spans + (1 if k < budget % spans else 0)
        start = rng.randrange(0, len(words) - size)
        words[start : start + size] = [f"edit{rng.randrange(10**6)}" for _ in range(size)]
    return " ".join(words)


def shingles(text: str) -> set:
    w = re.findall(r"\w+", text.lower())
    return {tuple(w[i : i + 5]) for i in range(len(w) - 4)}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


class FixtureCfg(BaseModel):
    name: str


def docs_dataset(root: Path, name: str, rows: list[dict]) -> str:
    def write(inputs, cfg, out, progress):
        (out / "docs").mkdir()
        pq.write_table(pa.Table.from_pylist(rows), out / "docs" / "part-00000.parquet")
        return {"documents": len(rows)}

    return str(run_stage("fixture", 1, write, {}, FixtureCfg(name=name), root))


def planted_corpus(rng: random.Random, n_orig: int, offset: int, prefix: str):
    origs = originals(n_orig, offset)
    rows, truth = [], {}
    for i, text in enumerate(origs):
        oid = f"{prefix}o{i:03d}"
        rows.append({"id": oid, "url": f"http://x/{oid}", "text": text})
        truth[oid] = oid
        if i % 2 == 0:  # half the originals get one to three near-copies
            for c in range(rng.randint(1, 3)):
                cid = f"{prefix}c{i:03d}{c}"
                rows.append({"id": cid, "url": f"http://x/{cid}", "text": perturb(text, rng.uniform(0.05, 0.15), rng)})
                truth[cid] = oid
    return rows, truth


def test_near_dup_recall_and_precision(tmp_path):
    rng = random.Random(7)
    rows, truth = planted_corpus(rng, 120, 0, "a")
    rows.append({"id": "zexact", "url": "http://x/zexact", "text": rows[0]["text"].upper() + "  "})
    truth["zexact"] = truth[rows[0]["id"]]
    ds = docs_dataset(tmp_path, "a", rows)
    out = Path(run_stage("dedup", 1, dedup, {"documents": ds}, DedupConfig(), tmp_path))
    dups = {r["id"]: r for r in pq.read_table(out / "duplicates.parquet").to_pylist()}
    text = {r["id"]: r["text"] for r in rows}

    assert dups["zexact"]["kind"] == "exact"
    # no distinct documents merged: every drop points into its own family
    for d, row in dups.items():
        assert truth[d] == truth[row["kept_id"]], (d, row)
    # recall over planted pairs whose true Jaccard is >= 0.8
    pairs = [(c, o) for c, o in truth.items() if c != o and c != "zexact"]
    strong = [(c, o) for c, o in pairs if jaccard(text[c], text[o]) >= 0.8]
    assert len(strong) >= 30
    found = sum(1 for c, o in strong if c in dups or o in dups)  # the pair is no longer both kept
    assert found / len(strong) >= 0.95, (found, len(strong))
    # the kept document of a cluster does not depend on the input order
    kept = pq.read_table(out / "docs").column("id").to_pylist()
    shuffled = list(rows)
    random.Random(3).shuffle(shuffled)
    out2 = Path(run_stage("dedup", 1, dedup, {"documents": docs_dataset(tmp_path, "shuffled", shuffled)}, DedupConfig(), tmp_path))
    assert sorted(pq.read_table(out2 / "docs").column("id").to_pylist()) == sorted(kept)
    stats = load_manifest(out).stats
    assert stats["documents_out"] == len(kept) == len(rows) - len(dups)


def test_second_batch_against_persisted_index(tmp_path):
    rng = random.Random(11)
    rows_a, truth_a = planted_corpus(rng, 40, 0, "a")
    out_a = Path(run_stage("dedup", 1, dedup, {"documents": docs_dataset(tmp_path, "a", rows_a)}, DedupConfig(), tmp_path))
    kept_a = set(pq.read_table(out_a / "docs").column("id").to_pylist())

    # batch b: near-copies of batch a's originals, an exact copy, and new distinct documents
    originals_a = [r for r in rows_a if r["id"].startswith("ao")]
    rows_b = [
        {"id": f"b-copy{i}", "url": f"http://y/{i}", "text": perturb(r["text"], 0.05, rng)} for i, r in enumerate(originals_a[:10])
    ]
    rows_b.append({"id": "b-exact", "url": "http://y/exact", "text": originals_a[11]["text"]})
    rows_b += [{"id": f"b-new{i}", "url": f"http://y/n{i}", "text": t} for i, t in enumerate(originals(10, 200))]
    out_b = Path(run_stage("dedup", 1, dedup, {"documents": docs_dataset(tmp_path, "b", rows_b)}, DedupConfig(), tmp_path))
    dups = {r["id"]: r for r in pq.read_table(out_b / "duplicates.parquet").to_pylist()}
    copies = [f"b-copy{i}" for i in range(10)]
    assert sum(c in dups for c in copies) >= 9
    assert all(dups[c]["kept_id"] in kept_a for c in copies if c in dups)
    assert dups["b-exact"]["kept_id"] == originals_a[11]["id"] and dups["b-exact"]["kind"] == "exact"
    assert not any(d.startswith("b-new") for d in dups)
    stats = load_manifest(out_b).stats
    assert stats["index_documents_before"] == len(kept_a)
    assert stats["duplicates_of_index"] == len(dups)


def test_signatures_are_vectorized_datasketch_minhash():
    from datasketch import LeanMinHash, MinHash

    signer = Signer(5, 112, 1)
    a, b = originals(2)
    m = LeanMinHash(seed=1, hashvalues=signer.signature(a), scheme="affine32")
    n = LeanMinHash(seed=1, hashvalues=signer.signature(perturb(a, 0.05, random.Random(1))), scheme="affine32")
    assert abs(m.jaccard(n) - jaccard(a, perturb(a, 0.05, random.Random(1)))) < 0.1
    assert m.jaccard(LeanMinHash(seed=1, hashvalues=signer.signature(b), scheme="affine32")) < 0.1
    assert MinHash(num_perm=112, seed=1).permutations.shape == (2, 112)
    assert np.array_equal(signer.signature(a), Signer(5, 112, 1).signature(a))  # stable across instances
    assert exact_hash("Hello,  World!") == exact_hash("hello world")


def test_index_segments_are_ordered_by_sequence_not_file_time(tmp_path):
    from formats.index_segments import index_segments, read_index, write_index_segment

    index = tmp_path / "index"
    write_index_segment(index, "batch-a", ["x", "y"], ["hash-x-old", "hash-y"], None)
    write_index_segment(index, "batch-b", ["x"], ["hash-x-new"], None)  # a refresh replaced x
    copy = tmp_path / "copied"
    shutil.copytree(index, copy)
    os.utime(copy / "batch-a.parquet", ns=(2 * 10**18, 2 * 10**18))  # the older segment now has the newer file time
    for where in (index, copy):
        assert [s["name"] for s in index_segments(where)] == ["batch-a", "batch-b"]
        ids, hashes, _ = read_index(where, "", set(), 112)
        assert dict(zip(ids, hashes)) == {"x": "hash-x-new", "y": "hash-y"}
    write_index_segment(copy, "batch-a", ["x", "y"], ["hash-x-old", "hash-y"], None)  # a rerun of batch a keeps its place
    assert [(s["name"], s["seq"]) for s in index_segments(copy)] == [("batch-a", 0), ("batch-b", 1)]
    assert dict(zip(*read_index(copy, "", set(), 112)[:2]))["x"] == "hash-x-new"
    (copy / "batch-c.parquet").write_bytes((copy / "batch-b.parquet").read_bytes())  # a file no manifest entry names
    assert [s["name"] for s in index_segments(copy)] == ["batch-a", "batch-b"]


def test_the_distributed_pass_equals_the_one_process_pass_bit_for_bit(tmp_path):
    from formats.documents import doc_files

    rng = random.Random(5)
    rows_a, _ = planted_corpus(rng, 60, 0, "a")
    rows_b, _ = planted_corpus(rng, 60, 30, "b")  # shares 30 originals with batch a: duplicates of the index
    rows_b.append({"id": "bexact", "url": "http://x/bexact", "text": rows_b[0]["text"]})
    rows_b.append(dict(rows_b[5]))  # the same id twice
    for min_jaccard in (0.7, 0.3):  # 0.3: many candidates, ties broken by id
        cfg = DedupConfig(min_jaccard=min_jaccard)
        root = tmp_path / str(min_jaccard)
        for name, rows in (("a", rows_a), ("b", rows_b)):  # without an index, then with one
            ds = docs_dataset(root, name, rows)
            out = Path(run_stage("dedup", 1, dedup, {"documents": ds}, cfg, root))
            assert (out / "duplicates.parquet").read_bytes() == reference_duplicates(out, cfg, doc_files(ds)), (min_jaccard, name)
        assert load_manifest(out).stats["duplicates_of_index"] > 10


def test_the_live_index_equals_a_last_write_wins_reading_of_every_segment(tmp_path):
    """The Arrow view of the index against the plain reading it replaced: every segment in
    sequence order into a dict (the latest entry wins), the batch's own ids left out, id order."""
    from formats.index_segments import index_segments, live_index, write_index_segment

    rng = random.Random(11)
    index = tmp_path / "index"
    for n in range(4):
        ids = rng.sample([f"doc-{i:03d}" for i in range(40)], 15)
        sigs = None if n == 2 else np.array([[rng.randrange(2**32) for _ in range(16)] for _ in ids], dtype=np.uint32)  # batch 2: near-dedup off
        write_index_segment(index, f"batch-{n}", ids, [f"h{n}-{i}" for i in ids], sigs)
    expected = {}
    for seg in index_segments(index):
        t = pq.read_table(index / f"{seg['name']}.parquet")
        for i, h, s in zip(t["id"].to_pylist(), t["hash"].to_pylist(), t["signature"].to_pylist()):
            expected[i] = (h, s if len(s) == 16 else [0] * 16)
    exclude = sorted(rng.sample(sorted(expected), 5))
    live = live_index(index, "", pa.array(exclude, pa.string()), 16)
    want = sorted((i, *v) for i, v in expected.items() if i not in exclude)
    assert list(zip(live["id"].to_pylist(), live["hash"].to_pylist(), live["signature"].to_pylist())) == want
    assert any(h.startswith("h2-") for _, h, _ in want) and any(h.startswith("h3-") for _, h, _ in want)
    assert live_index(index, "batch-3", pa.array([], pa.string()), 16).num_rows == len({i for s in ("batch-0", "batch-1", "batch-2")
                                                                                      for i in pq.read_table(index / f"{s}.parquet")["id"].to_pylist()})
