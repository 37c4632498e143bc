"""The model's and training's configuration, shared by pretraining and fine-tuning; free of
torch, so the config tree (and the data flow) loads without it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    compile_eval: bool = Field(False, description="with compile, compile evaluation too; off, it runs eagerly: a compiled eval "
                                                  "recompiles for no_grad and its batch shape, costing more than a few eval batches gain")
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
    pooling: Literal["mean", "last"] = "mean"
    dropout: float = Field(0.1, ge=0, lt=1)
    freeze_embeddings: bool = False
    freeze_layers: int = Field(0, ge=0, description="lower decoder blocks kept frozen")
    head_lr_scale: float = Field(10.0, gt=0, description="the head's learning rate = lr x this")


class HeadSpec(HeadConfig):
    """The head as built: the config plus what the examples dataset decides (finetune sets them)."""

    n_classes: int = Field(0, ge=0, description="the labels' count")
    class_weights: list[float] = Field(default_factory=list, description="per-class loss weights (balance_classes); empty = equal")


PRESETS: dict[str, dict] = {
    "test-tiny": dict(n_layer=2, n_head=2, n_kv_head=2, d_model=64, d_ff=192, max_seq_len=128),
    "demo": dict(n_layer=4, n_head=4, n_kv_head=4, d_model=256, d_ff=768, max_seq_len=256),
    "gpt2-small": dict(n_layer=12, n_head=12, n_kv_head=12, d_model=768, d_ff=2048, max_seq_len=1024),
}


class ModelShape(BaseModel):
    """The model a person chooses: everything but the vocabulary, which is the tokenizer's."""

    model_config = ConfigDict(extra="forbid")
    preset: str | None = Field("demo", description="test-tiny | demo | gpt2-small; explicit fields override it")
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_head: int = Field(4, ge=1)
    d_model: int = Field(256, ge=8)
    d_ff: int = Field(768, ge=8)
    max_seq_len: int = Field(256, ge=8)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = Field(0.0, ge=0, lt=1, description="on the embeddings and each residual branch")
    attention_dropout: float = Field(0.0, ge=0, lt=1, description="on attention weights; >0 leaves SDPA's fused CPU kernel, ~40% slower here")
    tie_embeddings: bool = True
    init_std: float = 0.02

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset", "demo"):
            name = data.get("preset", "demo")
            if name not in PRESETS:
                raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
            data = {**PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.d_model % self.n_head or self.n_head % self.n_kv_head or (self.d_model // self.n_head) % 2:
            raise ValueError("d_model must split into n_head even-sized heads, and n_head into n_kv_head groups")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class ModelConfig(ModelShape):
    """The model as built: its shape and the tokenizer's vocabulary (pretrain sets it from its
    tokenizer input; model_config.json beside every checkpoint holds it)."""

    vocab_size: int = Field(4096, ge=8)

    @classmethod
    def of(cls, shape: ModelShape, vocab_size: int) -> "ModelConfig":
        return cls.model_validate({**shape.model_dump(), "vocab_size": vocab_size})


class RunSpec(BaseModel):
    """One training run, as the launcher hands it to every trainer process (JSON)."""

    model_config = ConfigDict(extra="forbid")
    model: ModelConfig
    train: TrainConfig
    shards: str = ""  # tokenize dataset: train/ and val/ (objective lm)
    tokenizer: str  # sentencepiece model file
    objective: Literal["lm", "sft", "classify"] = "lm"
    examples: str = ""  # examples dataset: train.arrow, val.arrow (objectives sft, classify)
    head: HeadSpec = HeadSpec()
    out: str
    val_bytes_per_token: float = 0.0  # UTF-8 bytes per token of the val split, for bits per byte
    init_from: str = ""  # safetensors weights to start from (continued pretraining, fine-tuning)
    debug_weight_digests: bool = False  # tests: per-rank digests of weights and data after each step
