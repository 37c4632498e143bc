"""The data flow: crawl and/or ingest -> extract -> clean -> dedup -> paragraph_dedup.

Its result's `documents` is the dataset later flows train on: paragraph_dedup's output, or
dedup's when paragraph_dedup is off."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.llmill_config import LlmillConfig
from flows.locked import refuse_locked_changes
from formats.manifest import load_manifest
from tasks.clean import clean_task
from tasks.crawl import crawl_task
from tasks.dedup import dedup_task
from tasks.extract import extract_task
from tasks.ingest import ingest_task
from tasks.paragraph_dedup import paragraph_dedup_task


@flow(name="data", log_prints=True)
def data_flow(config: LlmillConfig) -> dict:
    refuse_locked_changes(config)
    root = config.data_root
    raw = []
    if config.crawl.seeds:
        raw.append(crawl_task({}, config.crawl, root))
    if config.ingest.paths:
        raw.append(ingest_task({}, config.ingest, root))
    if not raw:
        raise ValueError("nothing to read: set crawl.seeds and/or ingest.paths")
    docs = extract_task({"raw": raw}, config.extract, root, config.executor)
    cleaned = clean_task({"documents": docs}, config.clean, root, config.executor)
    deduped = dedup_task({"documents": cleaned}, config.dedup, root, config.executor)
    result = {"raw": raw, "docs": docs, "clean": cleaned, "dedup": deduped, "documents": deduped}
    if config.paragraph_dedup.enabled:
        result["paragraphs"] = result["documents"] = paragraph_dedup_task({"documents": deduped}, config.paragraph_dedup, root)
    create_markdown_artifact(summary_markdown(result), key="data-summary", description="data flow summary")
    return result


def summary_rows(result: dict) -> list[tuple[str, str]]:
    """The figures a person checks after a data run, as (label, value) rows."""
    rows = []
    for raw in result["raw"]:
        m = load_manifest(raw)
        if m.stage == "crawl":
            rows.append(("pages crawled", str(m.stats["pages"])))
            for reason, n in sorted(m.stats.get("not_fetched", {}).items()):
                rows.append((f"  not fetched: {reason}", str(n)))
        else:
            rows.append(("WARC files ingested", str(m.stats["warc_files"])))
    ext = load_manifest(result["docs"]).stats
    rows.append(("HTML responses", str(ext["html_responses"])))
    rows.append(("documents extracted", str(ext["documents"])))
    for reason, n in sorted(ext["quarantined_by_reason"].items()):
        rows.append((f"  quarantined: {reason}", str(n)))
    cl = load_manifest(result["clean"]).stats
    rows.append(("documents after clean", str(cl["documents_out"])))
    for rule, n in sorted(cl["dropped_by_rule"].items()):
        rows.append((f"  dropped: {rule}", str(n)))
    rows.append(("PII redacted", ", ".join(f"{k} {v}" for k, v in cl["pii_redacted"].items())))
    dd = load_manifest(result["dedup"]).stats
    rows.append(("exact duplicates", str(dd["exact_duplicates"])))
    rows.append(("near duplicates", str(dd["near_duplicates"])))
    rows.append(("documents after dedup", str(dd["documents_out"])))
    if result.get("paragraphs"):
        pd = load_manifest(result["paragraphs"]).stats
        rows.append(("repeated paragraphs removed", f"{pd['paragraphs_removed']} ({pd['removed_fraction']:.1%} of the text)"))
        rows.append(("documents after paragraph dedup", str(pd["documents_out"])))
    for stage in ("docs", "clean", "dedup", "paragraphs"):
        if result.get(stage):
            rows.append((f"{stage} dataset", result[stage]))
    for raw in result["raw"]:
        rows.append(("raw dataset", raw))
    return rows


def summary_markdown(result: dict) -> str:
    lines = ["| | |", "|---|---|"] + [f"| {k.strip()} | {v} |" for k, v in summary_rows(result)]
    return "# Data flow\n\n" + "\n".join(lines) + "\n"
