"""The parent flow: data now; pretrain, finetune and evaluate join as they land."""

from __future__ import annotations

from prefect import flow

from flows.config import LlmillConfig
from flows.data import data_flow


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config: LlmillConfig) -> dict:
    return {"data": data_flow(config)}
