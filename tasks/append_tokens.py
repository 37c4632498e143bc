"""append_tokens: a new version of a token dataset from the documents a refresh changed.

The new version holds token shards for the refresh's documents only, and lists (relative to
the datasets' root) the shards of the version before it beside its own. Documents the refresh
replaced or found gone are retired: `retired.parquet` names the shard each lived in, so the
loader skips exactly those token ranges. Earlier versions are never touched and stay readable;
live tokens of a version equal what tokenizing its whole corpus afresh would give.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from formats.documents import doc_files
from formats.manifest import Manifest, load_manifest
from formats.raw import read_changes
from formats.token_shards import SPLITS, doc_index, read_retired, split_shards, write_retired
from formats.tokenizer import load_tokenizer
from tasks.orchestration import stage_task
from tasks.stage import Progress, no_progress
from tasks.token_encoding import TokenizeConfig, encode_files, split_stats

VERSION = 1


def version_of(m: Manifest) -> int:
    return m.stats.get("version", 1)


def tokenizer_digest(m: Manifest) -> str:
    return m.stats["tokenizer"] if m.stage == "append_tokens" else m.inputs[1]


def check_lineage(previous: str, tok: str, cfg: TokenizeConfig) -> Manifest:
    """A version extends one made with the same tokenizer and the same split rule."""
    m = load_manifest(previous)
    if m.stage not in ("tokenize", "append_tokens"):
        raise ValueError(f"append_tokens: {previous} is a {m.stage} dataset, not token shards")
    if tokenizer_digest(m) != load_manifest(tok).digest:
        raise ValueError(f"append_tokens: {previous} was tokenized with another tokenizer than {tok}")
    if m.config != cfg.model_dump(mode="json"):
        raise ValueError(f"append_tokens: the tokenize config differs from {previous}'s; a different split needs a full rebuild")
    return m


def root_relative(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def retire(shards: dict[str, list[tuple[Path, frozenset[str]]]], root: Path, change_of: dict[str, str], version: int) -> list[dict]:
    """The live ranges, in the previous version's shards, of documents the refresh replaces or
    found gone. Reads the shards' small document indexes, never their tokens."""
    rows = []
    for split in SPLITS:
        for shard, retired in shards[split]:
            index = doc_index(shard)
            for doc, length, size in zip(index.column("doc_id").to_pylist(), index.column("length").to_pylist(),
                                         index.column("bytes").to_pylist()):
                if doc in change_of and doc not in retired:
                    rows.append({"shard": root_relative(shard, root), "doc_id": doc, "split": split, "tokens": length + 1,
                                 "bytes": size, "reason": change_of[doc], "version": version})
    return rows


class AppendTokensInputs(TypedDict):
    previous: str  # the token dataset version before this one
    documents: str  # this refresh's new and changed documents
    tokenizer: str
    raw: str  # the recrawl: which documents changed or went


def append_tokens(inputs: AppendTokensInputs, cfg: TokenizeConfig, out: Path, progress: Progress = no_progress) -> dict:
    previous, docs, tok, raw = inputs["previous"], inputs["documents"], inputs["tokenizer"], inputs["raw"]
    before = check_lineage(previous, tok, cfg)
    if load_manifest(raw).stage != "recrawl":
        raise ValueError(f"append_tokens: {raw} is not a recrawl dataset")
    root = out.parent.parent
    version = version_of(before) + 1
    change_of = {c["doc_id"]: c["change"] for c in read_changes(raw)}
    earlier = {split: split_shards(previous, split) for split in SPLITS}
    retired_now = retire(earlier, root, change_of, version)

    sp = load_tokenizer(tok)
    tokenizer = load_manifest(tok).digest
    added = encode_files(sp, doc_files(docs), out, cfg, progress, prefix=f"v{version:04d}-")
    final = out.with_name(out.name.removesuffix(".partial"))
    own = {split: [root_relative(final / split / f.name, root) for f in sorted((out / split).glob("*.arrow"))
                   if not f.name.endswith(".docs.arrow") and doc_index(f).num_rows]
           for split in SPLITS}
    write_retired(out, read_retired(previous) + retired_now)

    stats = split_stats(sp, {s: {"documents": 0, "tokens": 0, "bytes": 0} for s in SPLITS}, 0)
    for split in SPLITS:
        gone = [r for r in retired_now if r["split"] == split]
        stats["tokens"][split] = before.stats["tokens"][split] + added[split]["tokens"] - sum(r["tokens"] for r in gone)
        stats["documents"][split] = before.stats["documents"][split] + added[split]["documents"] - len(gone)
        stats["bytes"][split] = before.stats["bytes"][split] + added[split]["bytes"] - sum(r["bytes"] for r in gone)
    shard_files = {split: [root_relative(f, root) for f, _ in earlier[split]] + own[split] for split in SPLITS}
    return {
        **stats,
        "shards": sum(len(v) for v in shard_files.values()),
        "version": version,
        "previous": root_relative(Path(previous), root),
        "tokenizer": tokenizer,
        "added": {"documents": sum(a["documents"] for a in added.values()), "tokens": sum(a["tokens"] for a in added.values())},
        "retired": {"documents": len(retired_now), "tokens": sum(r["tokens"] for r in retired_now),
                    "by_reason": {k: sum(1 for r in retired_now if r["reason"] == k) for k in ("changed", "gone", "new")}},
        "shard_files": shard_files,
    }


append_tokens_task = stage_task(append_tokens)
