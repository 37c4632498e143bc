"""The data-refresh flow: re-crawl with conditional requests, process only what changed, and
append its tokens as a new version of the token dataset.

recrawl -> extract -> clean -> dedup and paragraph_dedup (against their persisted indexes) -> append_tokens, each on
the changed and new pages only, so a refresh costs in proportion to what changed. The chain of
versions of one corpus is kept in `<root>/refresh/<first version>.json`; the first version is
the data and tokenize flows' own output (answered from cache when they have run).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.llmill_config import LlmillConfig
from flows.locked import refuse_locked_changes
from formats import store
from formats.files import write_atomic
from formats.manifest import is_dataset, load_manifest
from tasks.append_tokens import append_tokens_task
from tasks.clean import clean_task
from tasks.dedup import dedup_task
from tasks.extract import extract_task
from tasks.paragraph_dedup import paragraph_dedup_task
from tasks.pretrain import VERSION as PRETRAIN_VERSION
from tasks.pretrain import pretrain_task
from tasks.recrawl import RecrawlConfig, recrawl_task
from tasks.stage import stage_dir
from tasks.tokenize import tokenize_task
from tasks.train_tokenizer import train_tokenizer_task


class Versions:
    """The refreshes of one corpus, oldest first, in a JSON file rewritten atomically (on an
    object store: one PUT, which replaces the object whole)."""

    def __init__(self, root: str, first_tokens: str):
        self.path = store.join(store.resolve_root(root), "refresh", f"{Path(first_tokens).name}.json")
        self.entries: list[dict] = json.loads(store.read_bytes(self.path))["versions"] if store.exists(self.path) else []

    def before(self, at: str) -> list[dict]:
        """Versions made before the refresh at `at`; a retried refresh finds the same predecessor."""
        out = []
        for e in self.entries:
            if e["at"] == at:
                break
            out.append(e)
        return out

    def record(self, entry: dict) -> None:
        self.entries = self.before(entry["at"]) + [entry]
        data = json.dumps({"versions": self.entries}, indent=1).encode()
        if store.is_url(self.path):
            fs, p = store.filesystem(self.path)
            fs.pipe_file(p, data)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, data)


def refresh_time() -> str:
    """The flow run's scheduled start: a retry of the same run reuses its finished stages."""
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time if flow_run.id else None
    return (when or datetime.now(timezone.utc)).isoformat()


@flow(name="data-refresh", log_prints=True)
def data_refresh_flow(config: LlmillConfig, at: str = "") -> dict:
    """`at`: the refresh's time (ISO 8601); empty = this run's scheduled start time."""
    refuse_locked_changes(config)
    if not config.crawl.seeds:
        raise ValueError("data-refresh re-crawls the crawl's pages: set crawl.seeds")
    from flows.data_flow import data_flow

    at = at or refresh_time()
    root = config.data_root
    base = data_flow(config)
    crawled = next(r for r in base["raw"] if load_manifest(r).stage == "crawl")
    tokenizer = train_tokenizer_task({"documents": base["documents"]}, config.tokenizer, root)
    first = tokenize_task({"documents": base["documents"], "tokenizer": tokenizer}, config.tokenize, root)
    versions = Versions(root, first)
    earlier = versions.before(at)
    latest = earlier[-1] if earlier else {"version": 1, "raw": crawled, "tokens": first, "run": first_run(config, root, first, tokenizer),
                                          "trained_tokens": first}

    raw = recrawl_task({"previous": latest["raw"]}, RecrawlConfig(crawl=config.crawl, at=at), root)
    docs = extract_task({"raw": [raw]}, config.extract, root, config.executor)
    cleaned = clean_task({"documents": docs}, config.clean, root, config.executor)
    deduped = dedup_task({"documents": cleaned}, config.dedup, root, config.executor)
    documents = deduped  # paragraphs are deduplicated against every earlier batch through the index
    if config.paragraph_dedup.enabled:
        documents = paragraph_dedup_task({"documents": deduped}, config.paragraph_dedup, root)
    tokens = append_tokens_task({"previous": latest["tokens"], "documents": documents, "tokenizer": tokenizer, "raw": raw}, config.tokenize, root)
    entry = {"version": load_manifest(tokens).stats["version"], "at": at, "raw": raw, "docs": docs, "clean": cleaned,
             "dedup": deduped, "paragraphs": documents if documents != deduped else None, "tokens": tokens, "run": latest.get("run"), "trained_tokens": latest.get("trained_tokens")}
    entry.update(continue_pretraining(config, root, tokenizer, entry, earlier))
    versions.record(entry)
    create_markdown_artifact(summary_markdown(versions.entries), key="data-refresh", description="data refresh versions")
    for label, value in summary_rows(entry):
        print(f"{label}: {value}")
    return entry


def first_run(config: LlmillConfig, root: str, first_tokens: str, tokenizer: str) -> str | None:
    """The pretrain flow's run on the first version, when it has run."""
    run = stage_dir(root, "pretrain", PRETRAIN_VERSION, config.pretrain, {"shards": first_tokens, "tokenizer": tokenizer})
    return str(run) if is_dataset(run) else None


def tokens_since(entries: list[dict], trained_on: str | None) -> int:
    """Tokens the refreshes after version `trained_on` added (all of them when it is the first)."""
    done = [e["tokens"] for e in entries]
    after = entries[done.index(trained_on) + 1:] if trained_on in done else entries
    return sum(load_manifest(e["tokens"]).stats["added"]["tokens"] for e in after)


def continue_pretraining(config: LlmillConfig, root: str, tokenizer: str, entry: dict, earlier: list[dict]) -> dict:
    """Continued pretraining from the latest run, once the refreshes since it added enough tokens."""
    cfg = config.refresh
    if not cfg.continue_pretraining:
        return {}
    pending = tokens_since(earlier + [entry], entry["trained_tokens"])
    if pending < cfg.min_new_tokens:
        print(f"continued pretraining waits: {pending:,} new tokens since the last run, fewer than {cfg.min_new_tokens:,}")
        return {}
    if not entry["run"]:
        print("continued pretraining skipped: no pretrained run to continue from (run the pretrain flow first)")
        return {}
    train = config.pretrain.train.model_copy(update={"steps": cfg.continue_steps or config.pretrain.train.steps})
    run = pretrain_task({"shards": entry["tokens"], "tokenizer": tokenizer, "continue_from": entry["run"]}, config.pretrain.model_copy(update={"train": train}), root)
    return {"run": run, "trained_tokens": entry["tokens"]}


def summary_rows(entry: dict) -> list[tuple[str, str]]:
    crawl = load_manifest(entry["raw"]).stats
    tokens = load_manifest(entry["tokens"]).stats
    changes = crawl["changes"]
    return [
        ("version", str(entry["version"])),
        ("requests (conditional)", f"{crawl['requests']} ({crawl['conditional_requests']})"),
        ("pages unchanged", str(crawl["unchanged"])),
        ("pages new / changed / gone", f"{changes['new']} / {changes['changed']} / {changes['gone']}"),
        ("documents added / retired", f"{tokens['added']['documents']} / {tokens['retired']['documents']}"),
        ("tokens added / retired", f"{tokens['added']['tokens']:,} / {tokens['retired']['tokens']:,}"),
        ("tokens train / val", f"{tokens['tokens']['train']:,} / {tokens['tokens']['val']:,}"),
        ("token dataset", entry["tokens"]),
        ("model", entry["run"] or "none yet"),
    ]


def summary_markdown(entries: list[dict]) -> str:
    lines = ["| version | at | new | changed | gone | tokens added | tokens retired | train tokens | val tokens |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        c = load_manifest(e["raw"]).stats["changes"]
        t = load_manifest(e["tokens"]).stats
        lines.append(f"| {e['version']} | {e['at']} | {c['new']} | {c['changed']} | {c['gone']} | {t['added']['tokens']:,} | "
                     f"{t['retired']['tokens']:,} | {t['tokens']['train']:,} | {t['tokens']['val']:,} |")
    return "# Data refresh\n\n" + "\n".join(lines) + "\n\nLatest token dataset: `" + entries[-1]["tokens"] + "`\n"
