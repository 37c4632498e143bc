"""The finetune flow: [labelled file ->] examples (labelled data, tokenized and split) -> finetune, from a pretrain run."""

from __future__ import annotations

from prefect import flow

from flows.llmill_config import LlmillConfig
from flows.locked import refuse_locked_changes
from formats.manifest import load_manifest
from tasks.examples import examples_task
from tasks.finetune import finetune_task
from tasks.labelled import LabelledConfig, labelled_task


@flow(name="finetune", log_prints=True)
def finetune_flow(config: LlmillConfig, documents: str = "", tokenizer: str = "", pretrain_run: str = "") -> dict:
    """`documents`: the dedup dataset (labels derived from its URLs unless a file is given);
    `tokenizer` and `pretrain_run`: the pretrain flow's outputs. Empty = run those flows first
    (from cache when they have run with this config)."""
    refuse_locked_changes(config, documents=documents, tokenizer=tokenizer, pretrain_run=pretrain_run)
    if not (documents and tokenizer and pretrain_run):
        from flows.graph import upstream

        done = upstream(config, "finetune")
        documents, tokenizer, pretrain_run = done["data"]["documents"], done["pretrain"]["tokenizer"], done["pretrain"]["run"]
    root = config.data_root
    ft = config.finetune
    inputs = {"documents": documents, "tokenizer": tokenizer, "pretrain": pretrain_run}
    if ft.examples.path:
        inputs["labelled"] = labelled_task({}, LabelledConfig(path=ft.examples.path), root)
    examples = examples_task(inputs, ft.examples.stage_config(), root)
    run = finetune_task({"examples": examples, "pretrain": pretrain_run, "tokenizer": tokenizer}, ft.stage_config(), root)
    return {"examples": examples, "run": run}


def summary_rows(result: dict) -> list[tuple[str, str]]:
    ex = load_manifest(result["examples"]).stats
    run = load_manifest(result["run"]).stats
    rows = [("fine-tuning", ex["kind"]), ("examples", f"{ex['examples']} ({ex['rejected']} rejected, {ex['truncated']} truncated)")]
    if ex["kind"] == "classify":
        rows.append(("classes", ", ".join(ex["labels"])))
    rows += [("best step", f"{run['best_step']} ({run['select_metric']} {run['best_metric']:.4f})"), ("run", result["run"])]
    return rows
