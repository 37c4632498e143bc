"""The thin Prefect layer every stage shares: the cache policy, progress and statistics.

Cache key = the task's source + the dataset's place (stage, version, config, input
digests, and for ingest the state of its sources). A stage recomputed upstream gets a new manifest digest, so everything after it
gets new keys; a cached result whose dataset is gone is refreshed (`StageTask`). A stage is one
function plus one line: `<name>_task = stage_task(<name>, ...)`.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel
from tqdm.auto import tqdm

from formats.manifest import is_dataset, load_manifest
from tasks.executor import ExecutorConfig, executor_scope
from tasks.stage import Inputs, StageFn, run_stage, source_layout, stage_dir


def artifact_key(stage: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return stage.replace("_", "-")


def _stage_version(task) -> int:
    return getattr(sys.modules[task.fn.__module__], "VERSION", 1)


def executor_layout(module: str, executor: ExecutorConfig | None) -> dict | None:
    """The executor settings a stage's output depends on (its module's EXECUTOR_LAYOUT), which
    therefore belong to the dataset's place; the engine and the worker count never do."""
    keys = getattr(sys.modules[module], "EXECUTOR_LAYOUT", ())
    executor = executor or ExecutorConfig()
    return {k: getattr(executor, k) for k in keys} or None


class StageCache(CachePolicy):
    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters, **kwargs):
        task = task_ctx.task
        layout = source_layout(task.fn.__module__, inputs["cfg"], executor_layout(task.fn.__module__, inputs.get("executor")))
        out = stage_dir(inputs["root"], task.name, _stage_version(task), inputs["cfg"], inputs["inputs"], layout)
        source = TASK_SOURCE.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        return hash_objects(source, task.name, str(out))


STAGE_CACHE = StageCache()


class StageProgress:
    """A terminal progress bar and a Prefect progress artifact, updated at most once a second."""

    def __init__(self, stage: str):
        self.stage = stage
        self.bar: tqdm | None = None
        self.artifact = None
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.stage, unit="item", leave=False)
        self.bar.total = total
        self.bar.n = done
        now = time.monotonic()
        if now - self.last < 1.0 and done < total:
            return
        self.last = now
        self.bar.refresh()
        pct = 100.0 * done / max(total, 1)
        try:
            if self.artifact is None:
                self.artifact = create_progress_artifact(pct, key=f"{artifact_key(self.stage)}-progress", description=self.stage)
            else:
                update_progress_artifact(self.artifact, pct)
        except Exception:  # progress display must never fail the stage
            pass

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def flat_stats(stats: dict, prefix: str = "") -> list[dict]:
    rows = []
    for k, v in stats.items():
        if isinstance(v, dict):
            rows += flat_stats(v, f"{prefix}{k}.")
        elif not isinstance(v, list):
            rows.append({"statistic": f"{prefix}{k}", "value": v})
    return rows


def prefect_stage(stage: str, version: int, fn: StageFn, inputs: Inputs, cfg: BaseModel, root: str,
                  executor: ExecutorConfig | None = None, **kw) -> str:
    """run_stage under Prefect, its shards on `executor`: progress bar and artifact, a log line
    and a statistics table."""
    progress = StageProgress(stage)
    try:
        with executor_scope(executor):
            out = run_stage(stage, version, fn, inputs, cfg, root, progress=progress,
                            layout=executor_layout(fn.__module__, executor), **kw)
    finally:
        progress.close()
    stats = load_manifest(out).stats
    get_run_logger().info("%s -> %s: %s", stage, out, {k: v for k, v in stats.items() if not isinstance(v, (dict, list))})
    create_table_artifact(flat_stats(stats), key=f"{artifact_key(stage)}-statistics", description=f"{stage}: {out}")
    return str(out)


ACCELERATOR_LIMIT = "llmill-accelerator"


ACCELERATOR_WAIT_S = 7 * 24 * 3600.0  # a training queues behind another for as long as that one trains


@contextmanager
def accelerator_slot():
    """Hold a slot of the `llmill-accelerator` global concurrency limit while training, so two
    trainings never share the machine's accelerator. Where the server defines no such limit (an
    embedded run's temporary server, a server nobody ran `llmill deploy` against), a file lock
    in the node's cache directory stands in for it: trainings on one machine still queue."""
    from prefect.concurrency.sync import concurrency

    if _limit_defined():
        with concurrency(ACCELERATOR_LIMIT, occupy=1, strict=True):
            yield
        return
    from formats.store import cache_dir
    from tasks.stage import StageLock

    with StageLock(cache_dir() / "accelerator.lock", wait_s=ACCELERATOR_WAIT_S, what="the accelerator (another training holds it)"):
        yield


def _limit_defined() -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # the embedded server of this process: nothing is defined there
        return False
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(ACCELERATOR_LIMIT)
            return True
        except ObjectNotFound:
            return False


class StageTask:
    """A stage's Prefect task (`stage_task`), called as `task(inputs, cfg, root[, executor])` in a
    flow. Before it runs, the dataset's place is computed: when the task cache answers for a place
    whose dataset is gone from disk, the cached result is refreshed and the stage recomputed."""

    def __init__(self, task, sharded: bool):
        self.task = task
        self.sharded = sharded
        self.name = task.name
        self.fn = task.fn

    def __call__(self, inputs: Inputs, cfg: BaseModel, root: str, executor: ExecutorConfig | None = None) -> str:
        module = self.fn.__module__
        layout = source_layout(module, cfg, executor_layout(module, executor) if self.sharded else None)
        out = stage_dir(root, self.name, _stage_version(self.task), cfg, inputs, layout)
        task = self.task.with_options(timeout_seconds=backstop_seconds(self.name, cfg))
        if not is_dataset(out):
            task = task.with_options(refresh_cache=True)
        return task(inputs, cfg, root, executor) if self.sharded else task(inputs, cfg, root)


def stage_task(fn: StageFn, *, sharded: bool = False, resumable: bool = False, training: bool = False,
               publish: Callable[[Path], None] | None = None, retries: int = 1, **options) -> StageTask:
    """The Prefect task of stage function `fn` (named after it; VERSION, EXECUTOR_LAYOUT and
    SOURCE_STATE are read from its module): cached by its dataset's place, retried, with a
    progress bar, a statistics table and a log line. `sharded`: its shards run on the flow's
    executor; `resumable`: a retry resumes from what the attempt kept; `training`: it holds the
    accelerator while it runs; `publish`: what it shows in the UI afterwards (artifacts), given
    its local copy."""
    name = fn.__name__

    def run(inputs: Inputs, cfg: BaseModel, root: str, executor: ExecutorConfig | None = None) -> str:
        version = getattr(sys.modules[fn.__module__], "VERSION", 1)
        with accelerator_slot() if training else nullcontext():
            out = prefect_stage(name, version, fn, inputs, cfg, root, executor=executor, sharded=sharded, resumable=resumable)
        if publish is not None:
            from formats.store import local_copy

            publish(local_copy(out))
        return out

    run.__module__, run.__name__, run.__qualname__ = fn.__module__, f"{name}_task", f"{name}_task"
    options = {"log_prints": training, **options}
    return StageTask(task(name=name, cache_policy=STAGE_CACHE, persist_result=True, retries=retries, **options)(run), sharded)


DATA_STAGE_BACKSTOP_S = 24 * 3600.0
TRAINING_SECONDS_PER_STEP = 120.0  # generous for one optimizer step of the presets on a CPU; a GPU step takes well under 1 s


def backstop_seconds(stage: str, cfg: BaseModel) -> float:
    """A task's timeout_seconds: far past what its config can legitimately take, so a hang ends
    (and the task's retry resumes from what was kept) instead of holding a worker forever.
    crawl: the slowest polite crawl (one host at its rate) plus every request running to its
    deadline; training: a bound per step; other stages: a day."""
    crawl = getattr(cfg, "crawl", cfg) if stage in ("crawl", "recrawl") else None
    if crawl is not None:
        polite = crawl.max_pages / crawl.requests_per_second_per_host
        stalled = crawl.max_pages * (crawl.max_retries + 1) * crawl.deadline_s / crawl.concurrency
        return 600 + 2 * polite + stalled
    if stage in ("pretrain", "finetune"):
        return 3600 + cfg.train.steps * TRAINING_SECONDS_PER_STEP
    return DATA_STAGE_BACKSTOP_S

