"""Deployments of every flow. Each takes the typed config (`LlmillConfig`) as its parameter, so
the Prefect UI's run form shows its fields, with the config file's values as defaults.

Two ways to run them: `llmill serve` (this process serves them all: `prefect.serve`, no worker)
and a process work pool with a worker (`llmill deploy`, how docker-compose runs them).
Trainings take a slot of the `llmill-accelerator` global concurrency limit (1 by default),
so two never share a machine's accelerator by accident.
"""

from __future__ import annotations

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from flows.llmill_config import LlmillConfig
from tasks.orchestration import ACCELERATOR_LIMIT


def flows() -> dict:
    from flows.data_flow import data_flow
    from flows.evaluate_flow import evaluate_flow
    from flows.finetune_flow import finetune_flow
    from flows.pipeline_flow import pipeline_flow
    from flows.pretrain_flow import pretrain_flow
    from flows.refresh_flow import data_refresh_flow

    return {"data": data_flow, "data-refresh": data_refresh_flow, "pretrain": pretrain_flow, "finetune": finetune_flow,
            "evaluate": evaluate_flow, "pipeline": pipeline_flow}


def deployments(config: LlmillConfig) -> list:
    """RunnerDeployments for `prefect.serve`, named after their flows, defaults from `config`.
    `data-refresh` runs on the config's cron schedule, created paused unless `refresh.active`."""
    from prefect.schedules import Cron

    params = {"config": config.model_dump(mode="json")}
    out = []
    for name, flow in flows().items():
        training = name in ("pretrain", "finetune", "pipeline")
        refresh = config.refresh
        out.append(
            flow.to_deployment(
                name=name,
                parameters=params,
                tags=["llmill", "training"] if training else ["llmill"],
                concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE) if training else None,
                schedules=[Cron(refresh.cron, timezone=refresh.timezone, active=refresh.active)] if name == "data-refresh" else None,
            )
        )
    return out


def ensure_accelerator_limit(slots: int = 1) -> None:
    """Create the global concurrency limit the training tasks take a slot of, if missing."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(ACCELERATOR_LIMIT)
        except Exception:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=ACCELERATOR_LIMIT, limit=slots))


def ensure_work_pool(name: str) -> bool:
    """Create a process work pool named `name` with Prefect's default job template, as `prefect
    work-pool create NAME --type process` does, if there is none; an existing pool (whatever a
    person changed in it) is left as it is. True if created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
        return True
