"""The parent flow: data -> pretrain; finetune and evaluate join as they land."""

from __future__ import annotations

from prefect import flow

from flows.config import LlmillConfig
from flows.data import data_flow
from flows.pretrain import pretrain_flow


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config: LlmillConfig) -> dict:
    data = data_flow(config)
    return {"data": data, "pretrain": pretrain_flow(config, data["dedup"])}
