"""What a run started from a deployment (the UI's Run form) may change.

Everything in the config, except the keys that reach the file system or the network outside the
run's own data: those stay as the deployment has them (the operator's config file), and a run
that asks for other values is refused before anything starts. The operator lists keys a run may
change anyway in the deployment config's `overridable`. The flows' path parameters (a flow
started alone may be given upstream datasets) must stay empty in a deployment run.
"""

from __future__ import annotations

from typing import Any

LOCKED = (
    "root", "overridable", "executor.address",
    "crawl.allow_private_addresses", "crawl.pydoc_port",
    "ingest.paths", "ingest.base_url", "ingest.allow_private_addresses",
    "dedup.index_dir", "paragraph_dedup.index_dir", "pretrain.train.init_word_vectors", "finetune.examples.path", "finetune.train.init_word_vectors",
    "evaluate.bias_probe",
)


def _get(tree: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def changed_locked_keys(deployed: dict, requested: dict) -> list[str]:
    """The locked keys whose requested value differs from the deployed one, less those the
    deployed config lists as overridable."""
    overridable = set(deployed.get("overridable") or ())
    return [k for k in LOCKED if k not in overridable and _get(deployed, k) != _get(requested, k)]


def refuse_locked_changes(config, **path_parameters: Any) -> None:
    """In a run of a deployment (not a subflow, not a run from the CLI): refuse it when it
    changes a locked key or sets a path parameter."""
    from prefect import get_client
    from prefect.runtime import deployment, flow_run

    if not deployment.id or flow_run.parent_flow_run_id:
        return
    with get_client(sync_client=True) as client:
        deployed = (client.read_deployment(deployment.id).parameters or {}).get("config") or {}
    bad = changed_locked_keys(deployed, config.model_dump(mode="json"))
    bad += [f"parameter {name}" for name, value in path_parameters.items() if value]
    if bad:
        raise PermissionError(
            f"this deployment fixes {', '.join(bad)}: a run started from it may not change them "
            "(they reach files or the network outside the run's data); the operator can list keys in the "
            "deployment config's `overridable`"
        )
