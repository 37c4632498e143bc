"""finetune: transfer from the pretrained model, through the same Accelerate trainer (mixed
precision, clipping, checkpoints and exact resume, DDP/FSDP all carry over).

Inputs: the examples dataset, the pretrain run, the tokenizer. Output: a run directory
(checkpoints/, best/ — the best weights by `train.select_metric`, final/, metrics.jsonl,
loss.png, labels.json; for SFT also hf/, the best model in the Hugging Face format).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TypedDict

from pydantic import BaseModel, ConfigDict, Field

from formats.manifest import load_manifest
from formats.tokenizer import tokenizer_path
from model.config import HeadConfig, HeadSpec, ModelConfig, TrainConfig
from tasks.orchestration import stage_task
from tasks.reports import loss_plot_markdown, plot_curves, training_events
from tasks.stage import Progress, no_progress

VERSION = 1


class FinetuneTrainConfig(TrainConfig):
    """The trainer's config with fine-tuning defaults: short, a lower rate, early stopping on accuracy."""

    steps: int = Field(300, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    eval_every: int = Field(25, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    early_stopping_patience: int = Field(6, ge=0)
    select_metric: str = Field("val_accuracy", description="classification: val_accuracy | val_macro_f1 | val_loss; SFT: val_loss")


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    head: HeadConfig = HeadConfig()
    balance_classes: bool = Field(False, description="weight the loss by inverse class frequency")
    train: FinetuneTrainConfig = FinetuneTrainConfig()
    export_hf: bool = Field(True, description="SFT: write the best model in the Hugging Face format")


def class_weights(counts: dict[str, int], labels: list[str]) -> list[float]:
    total = sum(counts.values())
    return [total / (len(labels) * max(counts.get(name, 0), 1)) for name in labels]


class FinetuneInputs(TypedDict):
    examples: str
    pretrain: str
    tokenizer: str


def finetune(inputs: FinetuneInputs, cfg: FinetuneConfig, out: Path, progress: Progress = no_progress) -> dict:
    from model.launch import run_training
    from model.config import RunSpec

    examples, run, tok = inputs["examples"], inputs["pretrain"], inputs["tokenizer"]
    ex = load_manifest(examples).stats
    model_cfg = ModelConfig.model_validate_json((Path(run) / "final" / "model_config.json").read_text())
    seq_len = ex["max_tokens"]  # the examples stage bounded them by this model's context
    if seq_len > model_cfg.max_seq_len:
        raise ValueError(f"finetune: {examples} holds examples of {seq_len} tokens, over the pretrained model's context {model_cfg.max_seq_len}")
    head = HeadSpec.model_validate(cfg.head.model_dump())
    if ex["kind"] == "classify":
        weights = class_weights(ex["per_split"]["train"], ex["labels"]) if cfg.balance_classes else []
        head = head.model_copy(update={"n_classes": ex["classes"], "class_weights": weights})
    train = cfg.train
    if ex["kind"] == "sft" and not train.select_metric.endswith(("loss", "ppl")):
        train = train.model_copy(update={"select_metric": "val_loss"})
    spec = RunSpec(model=model_cfg, train=TrainConfig.model_validate({**train.model_dump(), "seq_len": seq_len}), tokenizer=str(tokenizer_path(tok)),
                   objective=ex["kind"], examples=str(examples), head=head, out=str(out),
                   init_from=str(Path(run) / "final" / "model.safetensors"))

    summary = run_training(spec, on_event=training_events(progress, train.steps))
    shutil.copy(Path(examples) / "labels.json", out / "labels.json")
    if ex["kind"] == "sft" and cfg.export_hf:
        from model.export import export_hf

        best = out / "best" if (out / "best").exists() else out / "final"
        export_hf(best / "model.safetensors", model_cfg, spec.tokenizer, out / "hf")
    plot_curves({"fine-tuning": out}, out / "loss.png")
    return {**summary, "kind": ex["kind"], "labels": ex["labels"], "head": head.model_dump(), "model": model_cfg.model_dump()}


def publish_loss_curve(run_dir: Path) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(loss_plot_markdown(run_dir, "Fine-tuning"), key="finetune-loss-curve", description="fine-tuning loss")


finetune_task = stage_task(finetune, resumable=True, training=True, publish=publish_loss_curve)
