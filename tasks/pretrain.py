"""pretrain: train the decoder on the token shards, as a subprocess under the right launcher.

The run directory is the stage's partial directory until the run completes, so a retried
or restarted task finds its checkpoints there and resumes instead of starting over.
Output: checkpoints/, metrics.jsonl, final/ (our weights), hf/ (Hugging Face format),
loss.png, summary.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from formats.manifest import load_manifest
from formats.tokenizer import tokenizer_path
from model.config import ModelConfig, ModelShape, TrainConfig
from tasks.orchestration import stage_task
from tasks.reports import loss_plot_markdown, plot_curves, training_events
from tasks.stage import Progress, no_progress

VERSION = 1


class PretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: ModelShape = ModelShape()
    train: TrainConfig = TrainConfig()
    export_hf: bool = Field(True, description="write the final model in the Hugging Face format")


class PretrainInputs(TypedDict):
    shards: str
    tokenizer: str
    continue_from: NotRequired[str]  # a pretrain run of the same model (continued pretraining after a refresh)


def pretrain(inputs: PretrainInputs, cfg: PretrainConfig, out: Path, progress: Progress = no_progress) -> dict:
    # torch only where needed: a flow process that launches the trainer and exports nothing imports none
    from model.config import RunSpec
    from model.launch import run_training

    shards, tok = inputs["shards"], inputs["tokenizer"]
    earlier = [inputs["continue_from"]] if inputs.get("continue_from") else []
    tok_stats = load_manifest(tok).stats
    shard_stats = load_manifest(shards).stats
    if shard_stats["vocab_size"] != tok_stats["vocab_size"]:
        raise ValueError("pretrain: the token shards were not made with this tokenizer")
    model_cfg = ModelConfig.of(cfg.model, tok_stats["vocab_size"])  # the vocabulary is the tokenizer's
    val_tokens, val_bytes = shard_stats["tokens"]["val"], shard_stats["bytes"]["val"]
    init_from = ""
    if earlier:
        before = load_manifest(earlier[0])
        if before.stage != "pretrain" or ModelConfig.model_validate(before.stats["model"]) != model_cfg:
            raise ValueError(f"pretrain: {earlier[0]} is not a run of this model config; continued pretraining needs the same model")
        init_from = str(Path(earlier[0]) / "final" / "model.safetensors")
    spec = RunSpec(
        init_from=init_from,
        model=model_cfg,
        train=cfg.train,
        shards=str(shards),
        tokenizer=str(tokenizer_path(tok)),
        out=str(out),
        val_bytes_per_token=val_bytes / val_tokens if val_tokens else 0.0,
    )

    summary = run_training(spec, on_event=training_events(progress, cfg.train.steps))
    if cfg.export_hf:
        from model.export import export_hf

        export_hf(out / "final" / "model.safetensors", spec.model, spec.tokenizer, out / "hf")
    plot_curves({"pretraining": out}, out / "loss.png")
    return {**summary, "model": spec.model.model_dump()}  # with the trainer's count of params


def publish_loss_curve(run_dir: Path) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(loss_plot_markdown(run_dir, "Pretraining"), key="pretrain-loss-curve", description="training and validation loss")


pretrain_task = stage_task(pretrain, resumable=True, training=True, publish=publish_loss_curve)
