"""Export to the Hugging Face format: a LlamaForCausalLM config.json, model.safetensors and
the tokenizer (tokenizer.json + config), loadable by `AutoModelForCausalLM` and
`AutoTokenizer` with no custom code."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from formats.tokenizer import BOS, EOS, PAD
from model.llama import Llama, ModelConfig


def hf_name(name: str) -> str:
    """Our parameter names -> LlamaForCausalLM's."""
    parts = name.split(".")
    if parts[0] == "embed":
        return "model.embed_tokens.weight"
    if parts[0] == "norm":
        return "model.norm.weight"
    if parts[0] == "lm_head":
        return "lm_head.weight"
    i, rest = parts[1], ".".join(parts[2:])
    table = {
        "attn_norm.weight": "input_layernorm.weight",
        "mlp_norm.weight": "post_attention_layernorm.weight",
        "attn.q.weight": "self_attn.q_proj.weight",
        "attn.k.weight": "self_attn.k_proj.weight",
        "attn.v.weight": "self_attn.v_proj.weight",
        "attn.o.weight": "self_attn.o_proj.weight",
        "mlp.gate.weight": "mlp.gate_proj.weight",
        "mlp.up.weight": "mlp.up_proj.weight",
        "mlp.down.weight": "mlp.down_proj.weight",
    }
    return f"model.layers.{i}.{table[rest]}"


def hf_config(cfg: ModelConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="silu",
        attention_bias=False,
        attention_dropout=cfg.attention_dropout,
        mlp_bias=False,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        torch_dtype="float32",
    )


def load_weights(model: Llama, path: str | Path) -> None:
    """Load our safetensors weights; a tied lm_head is the embedding, so it may be absent."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {k for k in missing if k.endswith("lm_head.weight")} if model.cfg.tie_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise ValueError(
            f"{path} does not fit this model config: missing {sorted(set(missing) - allowed)}, unexpected {sorted(unexpected)}"
        )


def export_hf(weights: str | Path, cfg: ModelConfig, tokenizer_model: str | Path, dest: str | Path) -> Path:
    from transformers import LlamaForCausalLM, LlamaTokenizer

    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ours = Llama(cfg)
    load_weights(ours, weights)
    hf = LlamaForCausalLM(hf_config(cfg))
    state = {hf_name(k): v for k, v in ours.state_dict().items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"export mapping is off: missing {missing}, unexpected {unexpected}")
    hf.save_pretrained(tmp, safe_serialization=True)
    shutil.copy(tokenizer_model, tmp / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(str(tmp), add_bos_token=True, add_eos_token=False, legacy=False)
    tok.pad_token = "<pad>"
    tok.save_pretrained(str(tmp))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


@torch.no_grad()
def logits_ours(weights: str | Path, cfg: ModelConfig, ids: torch.Tensor) -> torch.Tensor:
    model = Llama(cfg)
    load_weights(model, weights)
    model.eval()
    return model(ids)[0]
