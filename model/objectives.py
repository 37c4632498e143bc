"""What the trainer optimizes. Each objective builds its model, turns a range of global sample
indices into a batch, a batch into a loss, and scores the validation split; the loop in
model/train.py (devices, precision, DDP/FSDP, checkpoints, resume) is shared by all three:

- `lm`: next-token prediction on the token shards (pretraining, continued pretraining);
- `sft`: next-token prediction on prompt/response examples, loss on response tokens only;
- `classify`: a pooled linear head on the decoder, cross-entropy over the label set.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from formats.example_files import IGNORE
from model.example_batches import ExampleSet
from model.heads import Classifier
from model.llama import Llama
from model.token_windows import TokenWindows


def _all_reduce(values: list[float], world: int) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


class LanguageModeling:
    def __init__(self, spec, seq_len: int):
        self.spec, self.tc = spec, spec.train
        shards = Path(spec.shards)
        self.train = TokenWindows(shards / "train", seq_len, seed=self.tc.seed)
        try:
            self.val = TokenWindows(shards / "val", seq_len, seed=self.tc.seed + 1)
        except ValueError:
            self.val = None  # too small for a validation window: the metrics say so by their absence

    def build(self):
        return Llama(self.spec.model)

    def body(self, model):
        return model

    def prepare(self, model) -> None:
        """Adjust the built (and initialized) model before training: nothing to do for an LM."""

    def signature(self) -> dict:
        return {"objective": "lm"}

    def batch(self, first: int, size: int):
        return self.train.batch(first, size)

    def loss(self, model, batch):
        x, y = batch
        return model(x, y)[1]

    @torch.no_grad()
    def evaluate(self, model, accelerator, rank: int, world: int) -> dict:
        if self.val is None:
            return {}
        total = count = 0.0
        for i, (x, y) in enumerate(self.val.sequential(self.tc.eval_windows)):
            if i % world != rank:
                continue
            with accelerator.autocast():
                _, loss = model(x[None].to(accelerator.device), y[None].to(accelerator.device))
            total += float(loss) * y.numel()
            count += y.numel()
        total, count = _all_reduce([total, count], world)
        loss = total / max(count, 1)
        out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_tokens": int(count)}
        if self.spec.val_bytes_per_token:
            out["val_bpb"] = loss / math.log(2) / self.spec.val_bytes_per_token
        return out


class InstructionTuning(LanguageModeling):
    def __init__(self, spec, seq_len: int):
        self.spec, self.tc = spec, spec.train
        self.train = ExampleSet(Path(spec.examples) / "train.arrow", seq_len, seed=self.tc.seed)
        val = Path(spec.examples) / "val.arrow"
        self.val = ExampleSet(val, seq_len) if val.exists() else None

    def signature(self) -> dict:
        return {"objective": "sft"}

    def loss(self, model, batch):
        x, y = batch
        return model(x, y, ignore_index=IGNORE)[1]

    @torch.no_grad()
    def evaluate(self, model, accelerator, rank: int, world: int) -> dict:
        if self.val is None:
            return {}
        total = count = 0.0
        for i, (x, y) in enumerate(self.val.sequential(self.tc.micro_batch_size)):
            if i % world != rank:
                continue
            with accelerator.autocast():
                logits, _ = model(x.to(accelerator.device))
            y = y.to(accelerator.device)
            total += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum"))
            count += int((y != IGNORE).sum())
        total, count = _all_reduce([total, count], world)
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_tokens": int(count)}


class Classification:
    def __init__(self, spec, seq_len: int):
        self.spec, self.tc, self.head = spec, spec.train, spec.head
        self.train = ExampleSet(Path(spec.examples) / "train.arrow", seq_len, seed=self.tc.seed)
        val = Path(spec.examples) / "val.arrow"
        self.val = ExampleSet(val, seq_len) if val.exists() else None
        weights = self.head.class_weights
        self.weight = torch.tensor(weights, dtype=torch.float32) if weights else None

    def build(self):
        model = Classifier(self.spec.model, self.head.n_classes, self.head.pooling, self.head.dropout)
        return model

    def body(self, model):
        return model.body

    def prepare(self, model) -> None:
        model.freeze(self.head.freeze_embeddings, self.head.freeze_layers)

    def signature(self) -> dict:
        return {"objective": "classify", "n_classes": self.head.n_classes, "pooling": self.head.pooling}

    def batch(self, first: int, size: int):
        return self.train.batch(first, size)

    def loss(self, model, batch):
        x, lengths, label = batch
        logits = model(x, lengths)
        weight = self.weight.to(logits.device) if self.weight is not None else None
        return F.cross_entropy(logits.float(), label, weight=weight)

    @torch.no_grad()
    def evaluate(self, model, accelerator, rank: int, world: int) -> dict:
        if self.val is None:
            return {}
        k = self.head.n_classes
        total = 0.0
        confusion = torch.zeros(k, k, dtype=torch.float64)
        for i, (x, lengths, label) in enumerate(self.val.sequential(self.tc.micro_batch_size)):
            if i % world != rank:
                continue
            with accelerator.autocast():
                logits = model(x.to(accelerator.device), lengths.to(accelerator.device)).float().cpu()
            total += float(F.cross_entropy(logits, label, reduction="sum"))
            confusion.index_put_((label, logits.argmax(-1)), torch.ones(len(label), dtype=torch.float64), accumulate=True)
        reduced = _all_reduce([total, *confusion.flatten().tolist()], world)
        total, confusion = reduced[0], torch.tensor(reduced[1:]).view(k, k)
        n = float(confusion.sum())
        tp = confusion.diag()
        precision = tp / confusion.sum(0).clamp(min=1)
        recall = tp / confusion.sum(1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        present = confusion.sum(1) > 0
        return {"val_loss": total / max(n, 1), "val_accuracy": float(tp.sum()) / max(n, 1),
                "val_macro_f1": float(f1[present].mean()) if present.any() else 0.0, "val_examples": int(n)}


def make_objective(spec, seq_len: int):
    return {"lm": LanguageModeling, "sft": InstructionTuning, "classify": Classification}[spec.objective](spec, seq_len)
