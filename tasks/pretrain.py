"""pretrain: train the decoder on the token shards, as a subprocess under the right launcher.

The run directory is the stage's partial directory until the run completes, so a retried
or restarted task finds its checkpoints there and resumes instead of starting over.
Output: checkpoints/, metrics.jsonl, final/ (our weights), hf/ (Hugging Face format),
loss.png, summary.json.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from model.config import TrainConfig
from model.config import ModelConfig
from tasks.orchestration import STAGE_CACHE, accelerator_slot, prefect_stage
from tasks.stage import Progress, load_manifest, no_progress
from tasks.store import local_copy
from tasks.train_tokenizer import MODEL_FILE

VERSION = 1


class PretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    export_hf: bool = Field(True, description="write the final model in the Hugging Face format")


def plot_losses(metrics_file: Path, dest: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(l) for l in metrics_file.read_text().splitlines() if l.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
    return dest


def pretrain(inputs: list[str], cfg: PretrainConfig, out: Path, progress: Progress = no_progress) -> dict:
    from model.export import export_hf
    from model.launch import run_training
    from model.train import RunSpec

    shards, tok, *earlier = inputs  # earlier: a pretrain run to continue from (a data refresh)
    tok_stats = load_manifest(tok).stats
    shard_stats = load_manifest(shards).stats
    if shard_stats["vocab_size"] != tok_stats["vocab_size"]:
        raise ValueError("pretrain: the token shards were not made with this tokenizer")
    model_cfg = cfg.model.model_copy(update={"vocab_size": tok_stats["vocab_size"]})
    val_tokens, val_bytes = shard_stats["tokens"]["val"], shard_stats["bytes"]["val"]
    init_from = ""
    if earlier:
        before = load_manifest(earlier[0])
        if before.stage != "pretrain" or ModelConfig.model_validate(before.stats["model"]) != ModelConfig.model_validate(model_cfg.model_dump()):
            raise ValueError(f"pretrain: {earlier[0]} is not a run of this model config; continued pretraining needs the same model")
        init_from = str(Path(earlier[0]) / "final" / "model.safetensors")
    spec = RunSpec(
        init_from=init_from,
        model=ModelConfig.model_validate(model_cfg.model_dump()),
        train=cfg.train,
        shards=str(shards),
        tokenizer=str(Path(tok) / MODEL_FILE),
        out=str(out),
        val_bytes_per_token=val_bytes / val_tokens if val_tokens else 0.0,
    )

    summary = run_training(spec, on_event=training_events(progress, cfg.train.steps))
    if cfg.export_hf:
        export_hf(out / "final" / "model.safetensors", spec.model, spec.tokenizer, out / "hf")
    plot_losses(out / "metrics.jsonl", out / "loss.png")
    return {**summary, "model": spec.model.model_dump(), "params": _params(spec.model)}


def training_events(progress: Progress, steps: int):
    """The trainer's JSON events -> log lines (Prefect captures prints) and the progress bar."""

    def on_event(event: dict) -> None:
        if event.get("event") == "metrics":
            print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in event.items() if k != "event"}))
            progress(event["step"], steps)
        elif event.get("event") in ("start", "early_stop", "done"):
            print(json.dumps(event))

    return on_event


def _params(cfg: ModelConfig) -> int:
    from model.llama import Llama

    return Llama(cfg).num_params()


def loss_plot_markdown(run_dir: Path) -> str:
    png = run_dir / "loss.png"
    if not png.exists():
        return "no loss curve"
    data = base64.b64encode(png.read_bytes()).decode()
    return f"# Pretraining loss\n\n![loss curve](data:image/png;base64,{data})\n\n`{png}`\n"


@task(name="pretrain", cache_policy=STAGE_CACHE, persist_result=True, retries=1, log_prints=True)
def pretrain_task(inputs: list[str], cfg: PretrainConfig, root: str) -> str:
    from prefect.artifacts import create_markdown_artifact

    with accelerator_slot():
        out = prefect_stage("pretrain", VERSION, pretrain, inputs, cfg, root, resumable=True)
    create_markdown_artifact(loss_plot_markdown(local_copy(out)), key="pretrain-loss-curve", description="training and validation loss")
    return out
