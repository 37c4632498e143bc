"""Tokenizer and token shards on real text (the Python library reference sources)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import sentencepiece as spm

from formats.manifest import load_manifest
from formats.token_shards import ShardError, open_tokens, token_dtype
from formats.tokenizer import EOS
from model.token_windows import TokenWindows
from tasks.stage import run_stage
from tasks.token_encoding import TokenizeConfig
from tasks.tokenize import tokenize
from tasks.train_tokenizer import TokenizerConfig, train_tokenizer
from tests.corpus import corpus_dataset, library_texts


@pytest.fixture(scope="module")
def built(shared_root, library_corpus):
    docs, tok, shards = library_corpus
    return shared_root, docs, Path(tok), Path(shards)


def test_tokenizer_is_deterministic(built, tmp_path):
    root, docs, tok, _ = built
    again = run_stage("train_tokenizer", 1, train_tokenizer, {"documents": docs}, TokenizerConfig(vocab_size=512), tmp_path)
    assert (Path(tok) / "tokenizer.model").read_bytes() == (again / "tokenizer.model").read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(Path(tok) / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert sp.get_piece_size() == 512


def test_shards_round_trip(built):
    import pyarrow.parquet as pq

    root, docs, tok, shards = built
    sp = spm.SentencePieceProcessor(model_file=str(Path(tok) / "tokenizer.model"))
    texts = {r["id"]: r["text"] for r in pq.read_table(Path(docs) / "docs").to_pylist()}
    seen = {}
    for split in ("train", "val"):
        for tokens_file in sorted((Path(shards) / split).glob("part-*[0-9].arrow")):
            tokens = open_tokens(tokens_file)
            assert tokens.dtype == np.uint16
            index = pa.ipc.open_file(pa.memory_map(str(tokens_file.with_suffix(".docs.arrow")))).read_all().to_pylist()
            for row in index:
                ids = tokens[row["start"] : row["start"] + row["length"]].tolist()
                assert tokens[row["start"] + row["length"]] == EOS  # documents separated by </s>
                assert sp.decode(ids) == texts[row["doc_id"]]
                seen[row["doc_id"]] = split
    assert set(seen) == set(texts)
    stats = load_manifest(shards).stats
    assert stats["documents"]["val"] == sum(1 for s in seen.values() if s == "val") > 0
    assert stats["tokens"]["train"] == sum(len(open_tokens(f)) for f in (Path(shards) / "train").glob("part-*[0-9].arrow"))


def test_split_is_stable_when_the_corpus_grows(built, tmp_path):
    root, docs, tok, shards = built
    bigger = corpus_dataset(tmp_path, "lib", library_texts(140))  # the same ids, and 20 more
    more = run_stage("tokenize", 1, tokenize, {"documents": bigger, "tokenizer": str(tok)}, TokenizeConfig(val_fraction=0.1), tmp_path)

    def val_ids(ds):
        return {r["doc_id"] for f in (Path(ds) / "val").glob("*.docs.arrow") for r in pa.ipc.open_file(pa.memory_map(str(f))).read_all().to_pylist()}

    assert val_ids(shards) <= val_ids(more)


def test_token_dtype_by_vocabulary():
    assert token_dtype(512) == pa.uint16() and token_dtype(65536) == pa.uint16()
    assert token_dtype(65537) == pa.uint32() and token_dtype(200_000) == pa.uint32()


def test_windows_are_seeded_and_resumable(built):
    _, _, _, shards = built
    w = TokenWindows(Path(shards) / "train", 64, seed=3)
    x1, y1 = w.batch(100, 8)
    x2, y2 = TokenWindows(Path(shards) / "train", 64, seed=3).batch(100, 8)
    assert x1.shape == (8, 64) and (x1 == x2).all() and (x1[:, 1:] == y1[:, :-1]).all()
    assert not (w.batch(108, 8)[0] == x1).all()


def test_bad_inputs_give_clear_errors(built, tmp_path):
    root, docs, tok, shards = built
    empty = corpus_dataset(tmp_path, "empty", [])
    with pytest.raises(ValueError, match="corpus is empty"):
        run_stage("train_tokenizer", 1, train_tokenizer, {"documents": empty}, TokenizerConfig(vocab_size=512), tmp_path)
    tiny = corpus_dataset(tmp_path, "tiny", ["just a few words here"] * 3)
    with pytest.raises(ValueError, match="larger than the text supports"):
        run_stage("train_tokenizer", 1, train_tokenizer, {"documents": tiny}, TokenizerConfig(vocab_size=5000, sample_chars=1000), tmp_path)
    with pytest.raises(ShardError, match="fewer than one window"):
        TokenWindows(Path(shards) / "val", 10_000_000)
    bad = tmp_path / "bad" / "train"
    bad.mkdir(parents=True)
    good = sorted((Path(shards) / "train").glob("part-*[0-9].arrow"))[0]
    (bad / "part-00000.arrow").write_bytes(good.read_bytes()[:200])
    with pytest.raises(ShardError, match="not a readable token shard"):
        TokenWindows(bad, 16)


def test_val_documents_copied_from_train_text_are_moved_or_dropped(built, tmp_path):
    """Two val documents repeat long stretches of train documents (a repeated section, shared
    boilerplate): they leave val; the val documents that are their own stay."""
    from formats.token_shards import split_of
    from tasks.token_encoding import DecontaminateConfig

    root, docs, tok, shards = built
    texts = library_texts(30)
    cfg = TokenizeConfig(val_fraction=0.3)
    val_at = [i for i in range(len(texts)) if split_of(f"dc-{i:04d}", cfg.seed, cfg.val_fraction) == "val"]
    train_at = [i for i in range(len(texts)) if split_of(f"dc-{i:04d}", cfg.seed, cfg.val_fraction) == "train"]
    assert len(val_at) >= 4
    copies = {val_at[0]: texts[train_at[0]][:6000] + "\nA closing note written for this page alone.",  # mostly a train page
              val_at[1]: texts[train_at[1]][2000:5000] + "\n" + texts[val_at[1]][:1500]}  # a third of its text is not
    corpus = corpus_dataset(tmp_path, "dc", [copies.get(i, t) for i, t in enumerate(texts)])

    def val_ids(ds):
        return {r["doc_id"] for f in (Path(ds) / "val").glob("*.docs.arrow") for r in pa.ipc.open_file(pa.memory_map(str(f))).read_all().to_pylist()}

    def all_ids(ds):
        return {r["doc_id"] for split in ("train", "val") for f in (Path(ds) / split).glob("*.docs.arrow")
                for r in pa.ipc.open_file(pa.memory_map(str(f))).read_all().to_pylist()}

    plain = run_stage("tokenize", 1, tokenize, {"documents": corpus, "tokenizer": str(tok)}, cfg.model_copy(update={"decontaminate": DecontaminateConfig(enabled=False)}), tmp_path)
    moved = run_stage("tokenize", 1, tokenize, {"documents": corpus, "tokenizer": str(tok)}, cfg, tmp_path)
    dropped = run_stage("tokenize", 1, tokenize, {"documents": corpus, "tokenizer": str(tok)}, cfg.model_copy(update={"decontaminate": DecontaminateConfig(action="drop")}), tmp_path)
    copied = {f"dc-{val_at[0]:04d}", f"dc-{val_at[1]:04d}"}
    assert val_ids(plain) == {f"dc-{i:04d}" for i in val_at}
    assert val_ids(moved) == val_ids(dropped) == val_ids(plain) - copied
    assert all_ids(moved) == all_ids(plain) and all_ids(dropped) == all_ids(plain) - copied
    stats = load_manifest(moved).stats["decontamination"]
    assert stats["val_documents_before"] == len(val_at) and stats["val_documents_moved_to_train"] == 2
    assert stats["val_ngram_rate_before"] > 0.1 > stats["val_ngram_rate_after"], stats
    assert load_manifest(dropped).stats["decontamination"]["val_documents_dropped"] == 2
    assert "decontamination" not in load_manifest(plain).stats
