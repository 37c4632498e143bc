"""Task heads on the pretrained decoder: a sequence classifier (pooling + linear)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from model.llama import Llama, ModelConfig


class Classifier(nn.Module):
    """Llama body -> pooled hidden state -> linear layer over the classes.

    `mean` pools the non-padding positions; `last` takes the last real token, which in a causal
    model is the only position that has read the whole text (what LlamaForSequenceClassification does).
    """

    def __init__(self, cfg: ModelConfig, n_classes: int, pooling: Literal["mean", "last"] = "mean", dropout: float = 0.1):
        super().__init__()
        self.cfg = cfg
        self.body = Llama(cfg)
        if not cfg.tie_embeddings:  # the LM head is unused here; frozen so DDP does not wait for its gradient
            self.body.lm_head.weight.requires_grad_(False)
        self.pooling = pooling
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(cfg.d_model, n_classes)
        nn.init.normal_(self.head.weight, std=cfg.init_std)
        nn.init.zeros_(self.head.bias)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.body.blocks

    def freeze(self, embeddings: bool, lower_layers: int) -> None:
        if embeddings:
            self.body.embed.weight.requires_grad_(False)
        for block in self.body.blocks[:lower_layers]:
            block.requires_grad_(False)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.body.hidden(idx)
        if self.pooling == "last":
            pooled = h[torch.arange(h.shape[0], device=h.device), lengths - 1]
        else:
            mask = (torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]).to(h.dtype)
            pooled = (h * mask[..., None]).sum(1) / lengths[:, None].to(h.dtype)
        return self.head(self.drop(pooled))
