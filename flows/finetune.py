"""The finetune flow: [labelled file ->] examples (labelled data, tokenized and split) -> finetune, from a pretrain run."""

from __future__ import annotations

from prefect import flow

from flows.config import LlmillConfig
from flows.locked import refuse_locked_changes
from formats.manifest import load_manifest
from formats.store import resolve_root
from tasks.examples import examples_task
from tasks.finetune import finetune_task
from tasks.labelled import LabelledConfig, labelled_task
from tasks.orchestration import call_stage


@flow(name="finetune", log_prints=True)
def finetune_flow(config: LlmillConfig, documents: str = "", tokenizer: str = "", pretrain_run: str = "") -> dict:
    """`documents`: the dedup dataset (labels derived from its URLs unless a file is given);
    `tokenizer` and `pretrain_run`: the pretrain flow's outputs. Empty = run those flows first
    (from cache when they have run with this config)."""
    refuse_locked_changes(config, documents=documents, tokenizer=tokenizer, pretrain_run=pretrain_run)
    if not (documents and tokenizer and pretrain_run):
        from flows.data import data_flow
        from flows.pretrain import pretrain_flow

        documents = data_flow(config)["documents"]
        pre = pretrain_flow(config, documents)
        tokenizer, pretrain_run = pre["tokenizer"], pre["run"]
    root = resolve_root(config.root)
    ft = config.finetune
    labelled = [call_stage(labelled_task, [], LabelledConfig(path=ft.examples.path), root)] if ft.examples.path else []
    examples = call_stage(examples_task, [documents, tokenizer, pretrain_run, *labelled], ft.examples.stage_config(), root)
    run = call_stage(finetune_task, [examples, pretrain_run, tokenizer], ft.stage_config(), root)
    return {"examples": examples, "run": run}


def summary_rows(result: dict) -> list[tuple[str, str]]:
    ex = load_manifest(result["examples"]).stats
    run = load_manifest(result["run"]).stats
    rows = [("fine-tuning", ex["kind"]), ("examples", f"{ex['examples']} ({ex['rejected']} rejected, {ex['truncated']} truncated)")]
    if ex["kind"] == "classify":
        rows.append(("classes", ", ".join(ex["labels"])))
    rows += [("best step", f"{run['best_step']} ({run['select_metric']} {run['best_metric']:.4f})"), ("run", result["run"])]
    return rows
