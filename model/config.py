"""Training configuration, shared by pretraining and (later) fine-tuning."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (taskset, a pinned container or test
    worker), which os.cpu_count() ignores."""
    import os

    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(1000, ge=1, description="optimizer steps")
    micro_batch_size: int = Field(16, ge=1, description="windows per process per micro-step")
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    seq_len: int = Field(0, ge=0, description="window length; 0 = the model's max_seq_len")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    schedule: Literal["cosine", "wsd"] = "cosine"
    warmup_steps: int = Field(50, ge=0)
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of steps spent decaying")
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: float = Field(0.9, ge=0, description="sgd")
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    compile: bool = False
    eval_every: int = Field(100, ge=1)
    eval_windows: int = Field(64, ge=1, description="validation windows per evaluation")
    early_stopping_patience: int = Field(0, ge=0, description="evaluations without improvement; 0 = off")
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    select_metric: str = Field("val_loss", description="validation metric for early stopping and the best checkpoint; *loss/*ppl/*bpb are minimized, others maximized")
    seed: int = 0
    trackers: list[str] = Field(default_factory=lambda: ["tensorboard"], description="Accelerate trackers")
    distributed: Literal["none", "ddp", "fsdp"] = "none"
    num_processes: int = Field(1, ge=1)
    threads_per_process: int = Field(0, ge=0, description="torch threads; 0 = usable CPUs / processes")
    init_word_vectors: str = Field("", description="GloVe / word2vec text file for the embeddings")


class HeadConfig(BaseModel):
    """The classification head and what of the pretrained body it may change."""

    model_config = ConfigDict(extra="forbid")
    n_classes: int = Field(0, ge=0, description="set from the label set by the pipeline")
    pooling: Literal["mean", "last"] = "mean"
    dropout: float = Field(0.1, ge=0, lt=1)
    freeze_embeddings: bool = False
    freeze_layers: int = Field(0, ge=0, description="lower decoder blocks kept frozen")
    head_lr_scale: float = Field(10.0, gt=0, description="the head's learning rate = lr x this")
    class_weights: list[float] = Field(default_factory=list, description="per-class loss weights; set by the pipeline when balance_classes")
