"""The pretrain flow: train_tokenizer -> tokenize -> pretrain, on a deduplicated dataset."""

from __future__ import annotations

from prefect import flow

from flows.llmill_config import LlmillConfig
from flows.locked import refuse_locked_changes
from formats.manifest import load_manifest
from formats.store import join
from tasks.pretrain import pretrain_task
from tasks.tokenize import tokenize_task
from tasks.train_tokenizer import train_tokenizer_task


@flow(name="pretrain", log_prints=True)
def pretrain_flow(config: LlmillConfig, documents: str = "") -> dict:
    """`documents`: a documents dataset (paragraph_dedup's, dedup's or clean's); empty = the data flow's `documents`
    (answered from cache when the data flow has run with this config)."""
    refuse_locked_changes(config, documents=documents)
    if not documents:
        from flows.graph import upstream

        documents = upstream(config, "pretrain")["data"]["documents"]
    root = config.data_root
    tokenizer = train_tokenizer_task({"documents": documents}, config.tokenizer, root)
    shards = tokenize_task({"documents": documents, "tokenizer": tokenizer}, config.tokenize, root)
    run = pretrain_task({"shards": shards, "tokenizer": tokenizer}, config.pretrain, root)
    return {"tokenizer": tokenizer, "shards": shards, "run": run}


def summary_rows(result: dict) -> list[tuple[str, str]]:
    tok = load_manifest(result["tokenizer"]).stats
    shards = load_manifest(result["shards"]).stats
    run = load_manifest(result["run"]).stats
    rows = [
        ("tokenizer vocabulary", str(tok["vocab_size"])),
        ("tokens train / val", f"{shards['tokens']['train']:,} / {shards['tokens']['val']:,}"),
        ("model parameters", f"{run['params']:,}"),
        ("steps", str(run["steps"])),
        ("precision", {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}.get(run.get("precision", ""), "?")),
        ("tokens seen", f"{run['tokens_seen']:,}"),
    ]
    for key, label in (("val_loss", "validation loss (nats/token)"), ("val_ppl", "validation perplexity"), ("val_bpb", "validation bits per byte")):
        if key in run:
            rows.append((label, f"{run[key]:.4f}"))
    if "val_loss" not in run:
        rows.append(("validation", "none: the val split holds less than one window (raise tokenize.val_fraction)"))
    rows += [("training seconds", f"{run['seconds']:.0f}"), ("run", result["run"]), ("Hugging Face model", str(join(result["run"], "hf")))]
    return rows
