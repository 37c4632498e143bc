"""`llmill`: run the pipeline or one flow from a YAML config with `--set key=value` overrides."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()


def error(message: str) -> None:
    # soft_wrap: an error names paths and keys; hard line breaks at the terminal's width would
    # split them for anyone who copies or greps the message.
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)

ConfigArg = typer.Argument(None, help="YAML config (default: configs/demo.yaml)")
SetOpt = typer.Option([], "--set", "-s", help="override a config key: --set crawl.max_pages=50")


def _load(config: Optional[Path], overrides: list[str]):
    # Prefect reads its settings when first imported (flows.llmill_config imports it): set these first.
    # Quiet offline telemetry; and give the embedded server time for its first start, which
    # migrates a fresh SQLite database: 15-22 s on an idle 2-core machine, past Prefect's 20 s
    # default when the machine is busy.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from flows.llmill_config import ConfigError, load_config

    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        error(str(e))
        raise typer.Exit(2) from None
    return cfg


def _print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)


def _print_data_summary(result: dict) -> None:
    from flows.data_flow import summary_rows

    _print_rows("llmill data flow", summary_rows(result))


def _print_pretrain_summary(result: dict) -> None:
    from flows.pretrain_flow import summary_rows

    _print_rows("llmill pretrain flow", summary_rows(result))


def _require_server() -> None:
    """Deployments live on a Prefect server; the embedded one ends with this process."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        error("deployments need a Prefect server: start one (`prefect server start`) "
              "and set PREFECT_API_URL=http://127.0.0.1:4200/api")
        raise typer.Exit(2)


@contextmanager
def _embedded_server_settings():
    """On the embedded server (no PREFECT_API_URL), flow-run heartbeats are off: they let a server
    mark a run crashed once its process has died, and the embedded server dies with the process.
    Each flow's end waits for the heartbeat thread's current 1 s sleep: ~1 s per flow for the
    five flows of `llmill run`, most of them answered from cache in a fraction of that."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _guarded(flow, *args):
    """Run a flow; a failure caused by bad input or config ends with its message, not a traceback
    (Prefect has logged the traceback already)."""
    from model.launch import TrainingFailed

    try:
        with _embedded_server_settings():
            return flow(*args)
    except (ValueError, TrainingFailed) as e:
        error(f"{type(e).__name__}: {e}")
        raise typer.Exit(1) from None


@app.command()
def run(config: Optional[Path] = ConfigArg, set_: list[str] = SetOpt):
    """The whole pipeline: data, pretrain, finetune, evaluate; ends with the report's headline."""
    cfg = _load(config, set_)
    from flows.evaluate_flow import summary_rows as report_rows
    from flows.finetune_flow import summary_rows as finetune_rows
    from flows.pipeline_flow import pipeline_flow

    result = _guarded(pipeline_flow, cfg)
    _print_data_summary(result["data"])
    _print_pretrain_summary(result["pretrain"])
    if result["finetune"]:
        _print_rows("llmill finetune flow", finetune_rows(result["finetune"]))
    _print_rows("llmill evaluation (report: eval.json, report.md, model_card.md, data_card.md)", report_rows(result["report"]))


@app.command()
def pretrain(
    config: Optional[Path] = ConfigArg,
    set_: list[str] = SetOpt,
    documents: Optional[Path] = typer.Option(None, help="a documents dataset; default: the data flow's (from cache)"),
):
    """train_tokenizer, tokenize and pretrain on a documents dataset."""
    cfg = _load(config, set_)
    from flows.pretrain_flow import pretrain_flow

    _print_pretrain_summary(_guarded(pretrain_flow, cfg, str(documents) if documents else ""))


@app.command()
def data(config: Optional[Path] = ConfigArg, set_: list[str] = SetOpt):
    """The data flow alone: crawl/ingest, extract, clean, dedup, paragraph dedup."""
    cfg = _load(config, set_)
    from flows.data_flow import data_flow

    _print_data_summary(_guarded(data_flow, cfg))


@app.command()
def refresh(config: Optional[Path] = ConfigArg, set_: list[str] = SetOpt):
    """One incremental data refresh now: re-crawl with conditional requests, process the changed
    and new pages only, append their tokens as a new version (the data-refresh deployment's work)."""
    cfg = _load(config, set_)
    from flows.refresh_flow import data_refresh_flow, summary_rows

    _print_rows("llmill data refresh", summary_rows(_guarded(data_refresh_flow, cfg)))


@app.command()
def finetune(config: Optional[Path] = ConfigArg, set_: list[str] = SetOpt):
    """examples and finetune from the pretrained model (upstream flows answer from cache)."""
    cfg = _load(config, set_)
    from flows.finetune_flow import finetune_flow, summary_rows

    _print_rows("llmill finetune flow", summary_rows(_guarded(finetune_flow, cfg)))


@app.command()
def evaluate(config: Optional[Path] = ConfigArg, set_: list[str] = SetOpt):
    """evaluate the pretrained (and, when enabled, fine-tuned) model; upstream flows from cache."""
    cfg = _load(config, set_)
    from flows.evaluate_flow import evaluate_flow, summary_rows

    _print_rows("llmill evaluation", summary_rows(_guarded(evaluate_flow, cfg)))


@app.command()
def serve(config: Optional[Path] = ConfigArg, set_: list[str] = SetOpt):
    """Serve every flow as a deployment until stopped: runs started from the Prefect UI (or its
    API) execute in this process. Needs a Prefect server: set PREFECT_API_URL."""
    cfg = _load(config, set_)
    _require_server()
    from prefect import serve as serve_deployments

    from flows.deployments import deployments, ensure_accelerator_limit
    from flows.results_storage import describe_results_storage

    ensure_accelerator_limit()
    console.print(describe_results_storage(), soft_wrap=True)
    serve_deployments(*deployments(cfg))


@app.command()
def deploy(config: Optional[Path] = ConfigArg, set_: list[str] = SetOpt,
           pool: str = typer.Option("llmill", help="a process work pool; `prefect worker start --pool POOL` runs the deployments")):
    """Register every flow as a deployment on a work pool (how docker-compose's worker runs them),
    creating the pool (process type) if it does not exist."""
    cfg = _load(config, set_)
    _require_server()
    from prefect.runner.storage import LocalStorage

    from flows.deployments import deployments, ensure_accelerator_limit, ensure_work_pool
    from flows.results_storage import describe_results_storage

    if ensure_work_pool(pool):
        console.print(f"created the process work pool {pool}")
    ensure_accelerator_limit()
    console.print(describe_results_storage(), soft_wrap=True)
    project = Path(__file__).resolve().parents[1]
    for d in deployments(cfg):
        d.storage = LocalStorage(str(project))  # the worker runs the flows from this checkout (the image's /app)
        d.apply(work_pool_name=pool)
        console.print(f"deployed {d.flow_name}/{d.name} on work pool {pool}")


@app.command("results-storage")
def results_storage(url: Optional[str] = typer.Argument(None, help="save a remote storage block at this fsspec URL (s3://bucket/prefix)"),
                    name: str = typer.Option("llmill-results", help="the block's name"),
                    overwrite: bool = typer.Option(False, help="replace a block of that name")):
    """Say where the task cache's results are kept; with URL, save a remote storage block there
    (on the Prefect server) and print the setting that makes every worker use it."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.results_storage import SETTING, describe_results_storage, save_results_block

    if url is None:
        console.print(describe_results_storage(), soft_wrap=True)
        return
    _require_server()
    try:
        slug = save_results_block(url, name, overwrite)
    except ValueError as e:
        error(str(e))
        raise typer.Exit(2) from None
    console.print(f"saved; set this in every worker's environment (and the server's deployments' workers):\n{SETTING}={slug}", soft_wrap=True)


@app.command()
def gc(root: Optional[str] = typer.Argument(None, help="a data root: a path or s3://bucket/prefix (default: the config's root)"),
       config: Optional[Path] = typer.Option(None, help="YAML config whose root to clean"),
       delete: bool = typer.Option(False, "--delete", help="remove what is listed")):
    """List what no dataset references under a root: a killed or losing writer's attempt prefixes on an
    object store; partial directories and stale locks of runs not running now on a local disk."""
    from tasks.gc import delete as delete_paths
    from tasks.gc import garbage

    found = garbage(root or _load(config, []).root)
    for path in found:
        console.print(path, soft_wrap=True)
    if delete:
        delete_paths(found)
    console.print(f"{len(found)} {'removed' if delete else 'unreferenced (pass --delete to remove)'}")


@app.command()
def verify(root: Optional[str] = typer.Argument(None, help="a data root: a path or s3://bucket/prefix (default: the config's root)"),
           config: Optional[Path] = typer.Option(None, help="YAML config whose root to check")):
    """Check every dataset's files against its manifest (size and SHA-256); exits 1 when any differ."""
    from formats import store
    from tasks.verify import dataset_places, verify_dataset

    root = store.resolve_root(root or _load(config, []).root)
    places, bad = dataset_places(str(root)), 0
    for place in places:
        problems = verify_dataset(place)
        bad += bool(problems)
        for problem in problems:
            console.print(f"[red]{problem}[/red]", soft_wrap=True)
    console.print(f"{len(places)} datasets checked, {bad} with files that differ from their manifest")
    if bad:
        raise typer.Exit(1)


@app.command("show-config")
def show_config(config: Optional[Path] = ConfigArg, set_: list[str] = SetOpt):
    """Print the validated config tree, defaults filled in."""
    import yaml

    cfg = _load(config, set_)
    console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


if __name__ == "__main__":
    app()
