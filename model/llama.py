"""A Llama-style decoder on one screen: RMSNorm, rotary positions, SwiGLU, causal SDPA.

Weights map one-to-one onto transformers' LlamaForCausalLM (same RoPE convention,
rotate-half), so export is a renaming (model/export.py). RMSNorm, RoPE, SwiGLU and the
head + loss run as hand-fused autograd functions (model/fused.py); fp32 linear layers on CPU
use oneDNN's matmul (model/gemm.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model.config import PRESETS, ModelConfig  # noqa: F401 - re-exported; the config module is torch-free
from model.fused import linear_cross_entropy, rms_norm, rope, swiglu
from model.gemm import Linear


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def rope_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim)
    freqs = torch.outer(torch.arange(cfg.max_seq_len, device=device).float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.q = Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.k = Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v = Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o = Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        c = self.cfg
        q = self.q(x).view(b, t, c.n_head, c.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, c.n_kv_head, c.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, c.n_kv_head, c.head_dim).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=c.attention_dropout if self.training else 0.0, enable_gqa=c.n_kv_head != c.n_head
        )
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up = Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down(swiglu(self.gate(x), self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.d_model, cfg.norm_eps), Attention(cfg)
        self.mlp_norm, self.mlp = RMSNorm(cfg.d_model, cfg.norm_eps), SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.gradient_checkpointing = False
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: scale the residual projections by depth
            for w in (block.attn.o.weight, block.mlp.down.weight):
                nn.init.normal_(w, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.cfg.init_std)

    def hidden(self, idx):
        """The final normalized hidden states, (batch, time, d_model): what heads read."""
        t = idx.shape[1]
        if t > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.drop(self.embed(idx))
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin)
        return self.norm(x)

    def forward(self, idx, targets=None, ignore_index: int = -100):
        """(logits, None) without targets; (None, mean cross-entropy) with them: the loss is
        fused with the LM head (model/fused.py), so the full logits are never formed."""
        h = self.hidden(idx)
        if targets is None:
            return self.lm_head(h), None
        return None, linear_cross_entropy(h.reshape(-1, h.size(-1)), self.lm_head.weight, targets.reshape(-1), ignore_index)

    def compile_blocks(self) -> None:
        """torch.compile each block in place (regional compilation). The blocks share one graph,
        so a compile costs one block's trace and kernels whatever the depth (gpt2-small on one
        CPU: 21 s cold against 53 s for the whole model); the embedding, final norm and fused
        head + loss run eagerly. In place, so state dicts keep their names (no `_orig_mod.`) and
        hooks on the blocks (FSDP2's gathers, DDP's gradient hooks) still run around them."""
        for block in self.blocks:
            block.compile()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per parameter plus attention (PaLM appendix B)."""
        c = self.cfg
        return 6 * (self.num_params() - (0 if c.tie_embeddings else self.embed.weight.numel())) + 12 * c.n_layer * c.d_model * c.max_seq_len

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None):
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.max_seq_len :])
            logits = logits[:, -1, :].float()
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                if top_p:
                    sorted_logits, order = torch.sort(logits, descending=True)
                    probs = sorted_logits.softmax(-1)
                    drop = probs.cumsum(-1) - probs > top_p
                    logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
                nxt = torch.multinomial(logits.softmax(-1), 1)
            idx = torch.cat((idx, nxt), dim=1)
            if eos_id is not None and bool((nxt == eos_id).all()):
                break
        return idx


def param_groups(model: nn.Module, weight_decay: float, head_prefix: str | None = None, head_lr_scale: float = 1.0) -> list[dict]:
    """Decoupled weight decay on matrices only: none on norms, biases or embeddings. Parameters
    under `head_prefix` (a task head) get their own groups, with `lr_scale` = head_lr_scale."""
    groups: dict[tuple[bool, bool], list] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        decays = not (p.ndim < 2 or "embed" in name or "lm_head" in name and model.cfg.tie_embeddings)
        in_head = bool(head_prefix) and name.startswith(head_prefix)
        groups.setdefault((in_head, decays), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_scale": head_lr_scale if in_head else 1.0}
        for (in_head, decays), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    ]


def load_word_vectors(model: Llama, pieces: list[str], path: str, seed: int = 0) -> int:
    """Initialize token embeddings from GloVe / word2vec text vectors, matched through the
    tokenizer's pieces (case-folded, without the word-start mark); the rest stay random.
    Vectors of another width are projected by a fixed random matrix. Returns the match count."""
    wanted: dict[str, list[int]] = {}
    for i, piece in enumerate(pieces):
        word = piece.removeprefix("\u2581").lower()
        if word:
            wanted.setdefault(word, []).append(i)
    rows, vecs = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
            parts = line.rstrip().split(" ")
            if n == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header: count and width
            if len(parts) < 3 or parts[0] not in wanted:
                continue
            try:
                v = [float(x) for x in parts[1:]]
            except ValueError:
                raise ValueError(f"{path}:{n + 1}: not a word-vector line") from None
            for i in wanted.pop(parts[0]):
                rows.append(i)
                vecs.append(v)
    if not rows:
        return 0
    V = torch.tensor(vecs)
    if V.shape[1] != model.cfg.d_model:
        g = torch.Generator().manual_seed(seed)
        V = V @ (torch.randn(V.shape[1], model.cfg.d_model, generator=g) / math.sqrt(V.shape[1]))
    V = (V - V.mean()) / (V.std() + 1e-8) * model.cfg.init_std
    with torch.no_grad():
        model.embed.weight[torch.tensor(rows)] = V.to(model.embed.weight.dtype)
    return len(rows)
