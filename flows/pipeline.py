"""The parent flow: data -> pretrain -> finetune -> evaluate, each a subflow that also runs alone."""

from __future__ import annotations

from prefect import flow

from flows.config import LlmillConfig
from flows.locked import refuse_locked_changes
from flows.data import data_flow
from flows.evaluate import evaluate_flow, evaluation_inputs
from flows.finetune import finetune_flow
from flows.pretrain import pretrain_flow


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config: LlmillConfig) -> dict:
    refuse_locked_changes(config)
    data = data_flow(config)
    pre = pretrain_flow(config, data["documents"])
    fine = finetune_flow(config, data["documents"], pre["tokenizer"], pre["run"]) if config.finetune.enabled else None
    return {"data": data, "pretrain": pre, "finetune": fine, "report": evaluate_flow(config, evaluation_inputs(data, pre, fine))}
