"""The evaluate flow: the LM, the classifier and the bias probe against their baselines;
eval.json, report.md, model and data cards, plots, and the same as Prefect artifacts."""

from __future__ import annotations

import json

from prefect import flow

from flows.llmill_config import LlmillConfig
from flows.locked import refuse_locked_changes
from formats.store import join, local_copy
from tasks.evaluate import evaluate_task
from tasks.reports import headline_rows


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config: LlmillConfig, datasets: list[str] | None = None) -> str:
    """`datasets`: the pretrain run, token shards and tokenizer, optionally the finetune run and
    its examples, and the data datasets for the data card (each known by its manifest). Empty =
    run the upstream flows first (from cache when they have run with this config)."""
    refuse_locked_changes(config, datasets=datasets)
    if not datasets:
        from flows.graph import upstream

        done = upstream(config, "evaluate")
        datasets = evaluation_inputs(done["data"], done["pretrain"], done["finetune"])
    return evaluate_task({"datasets": sorted(set(datasets))}, config.evaluate, config.data_root)


def evaluation_inputs(data: dict, pre: dict, fine: dict | None) -> list[str]:
    """The datasets evaluate reads, from the data, pretrain and finetune flows' results."""
    datasets = [*data["raw"], data["docs"], data["clean"], data["dedup"], *([data["paragraphs"]] if data.get("paragraphs") else []),
                pre["tokenizer"], pre["shards"], pre["run"]]
    return datasets + ([fine["examples"], fine["run"]] if fine else [])


def summary_rows(report_dir: str) -> list[tuple[str, str]]:
    result = json.loads((local_copy(report_dir) / "eval.json").read_text())
    return [*headline_rows(result), ("report", str(join(report_dir, "report.md")))]
