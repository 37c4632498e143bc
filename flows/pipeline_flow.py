"""The parent flow: the whole chain (flows/graph.py), each step a subflow that also runs alone."""

from __future__ import annotations

from prefect import flow

from flows.graph import upstream
from flows.llmill_config import LlmillConfig
from flows.locked import refuse_locked_changes


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config: LlmillConfig) -> dict:
    refuse_locked_changes(config)
    done = upstream(config)
    return {"data": done["data"], "pretrain": done["pretrain"], "finetune": done["finetune"], "report": done["evaluate"]}
