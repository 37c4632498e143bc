"""evaluate: the language model, the classifier and a bias probe, each beside its baselines.

Inputs: datasets identified by their manifest's stage — `pretrain` run, `tokenize` shards,
`train_tokenizer`, and optionally `finetune` run + `examples`, plus any data-stage datasets
(crawl, ingest, extract, clean, dedup) whose manifests feed the data card.
Output: eval.json (stable keys), report.md, model_card.md, data_card.md, plots (PNG).

The LM is scored on the whole val split as one stream, <s> first, so every token is predicted;
the evaluated text is the val documents decoded from the shards, each followed by one newline
(standing for </s>), and the xz and unigram baselines are computed on exactly that text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field

from formats.files import write_atomic
from formats.manifest import load_manifest
from formats.token_shards import split_docs, split_tokens
from formats.tokenizer import BOS, EOS, load_tokenizer
from model.config import ModelConfig
from tasks.orchestration import stage_task
from tasks.scores import bits_per_byte, classification_scores, unigram_bpb, xz_baselines
from tasks.stage import Progress, no_progress

if TYPE_CHECKING:  # torch loads only when a model is evaluated: the config tree imports this module
    from model.llama import Llama

VERSION = 1
DEFAULT_BIAS_PROBE = Path(__file__).resolve().parents[1] / "configs" / "bias_probe.yaml"


class GenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(default_factory=lambda: ["The json module", "To open a file,", "class Path", "Return a list of"])
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.8, ge=0)
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int = 0


class LmEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    items: int = Field(40, ge=4, description="cloze items built from held-out sentences")
    choices: int = Field(4, ge=2)
    batch_size: int = Field(8, ge=1)


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(8, ge=1)
    max_val_tokens: int = Field(0, ge=0, description="0 = the whole val split")
    stride: int = Field(0, ge=0, description="tokens between the starts of scoring windows; 0 = half the model's context, "
                                            "so every token after the first window is scored with at least half of it")
    generation: GenerationConfig = GenerationConfig()
    bias_probe: str = Field("", description="templates YAML; empty = configs/bias_probe.yaml")
    lm_eval: LmEvalConfig = LmEvalConfig()


# --- the language model --------------------------------------------------------------------


def load_lm(run: str | Path, weights: str = "final") -> Llama:
    from model.export import load_weights
    from model.llama import Llama

    run = Path(run)
    model = Llama(ModelConfig.model_validate_json((run / weights / "model_config.json").read_text()))
    load_weights(model, run / weights / "model.safetensors")
    return model.eval()


def as_text(docs: list[str]) -> str:
    """Each document followed by one newline, the byte that stands for </s>."""
    return "".join(d + "\n" for d in docs)


def scoring_windows(n_targets: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, length, new) of each window over a stream of `n_targets` + 1 tokens: up to `window`
    inputs from `start`, of which the last `new` targets no earlier window scored. Windows start
    `stride` apart (the usual sliding-window perplexity), so after the first one every target is
    predicted from at least `window - stride` tokens of context; stride == window is consecutive
    windows, where a target right after a window's start sees almost none."""
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in 1..{window} (the model's context), got {stride}")
    out, scored, start = [], 0, 0
    while scored < n_targets:
        length = min(window, n_targets - start)
        out.append((start, length, start + length - scored))
        scored, start = start + length, start + stride
    return out


def scoring_stride(stride: int, window: int) -> int:
    """The configured stride, or half the context for 0."""
    return stride or max(1, window // 2)


def stream_nll(model: Llama, tokens: np.ndarray, batch_size: int = 8, progress: Progress = no_progress,
               stride: int = 0) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of every token of `tokens`, read as one stream after
    <s>, in windows of the model's context `stride` apart (0 = half the context); and the number
    of tokens scored."""
    import torch

    with torch.no_grad():
        return _stream_nll(model, tokens, batch_size, progress, scoring_stride(stride, model.cfg.max_seq_len))


def _stream_nll(model: Llama, tokens: np.ndarray, batch_size: int, progress: Progress, stride: int) -> tuple[float, int]:
    import torch
    import torch.nn.functional as F

    stream = torch.from_numpy(np.concatenate(([BOS], tokens.astype(np.int64))))
    windows = scoring_windows(len(stream) - 1, model.cfg.max_seq_len, stride)
    total, count = 0.0, 0
    for b in range(0, len(windows), batch_size):
        group = windows[b : b + batch_size]
        for size in sorted({length for _, length, _ in group}):  # the last windows may be short
            rows = [(s, new) for s, length, new in group if length == size]
            x = torch.stack([stream[s : s + size] for s, _ in rows])
            y = torch.stack([stream[s + 1 : s + size + 1] for s, _ in rows])
            logits, _ = model(x)
            nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(len(rows), size)
            for i, (_, new) in enumerate(rows):
                total += float(nll[i, size - new :].sum())
                count += new
        progress(min(b + batch_size, len(windows)), len(windows))
    return total, count


def evaluate_lm(model: Llama, shards: str, sp, cfg: EvaluateConfig, progress: Progress = no_progress) -> dict:
    val_tokens = split_tokens(shards, "val")
    if len(val_tokens) == 0:
        raise ValueError(f"evaluate: {shards} has no val tokens; raise tokenize.val_fraction")
    docs = split_docs(shards, "val", sp)
    if cfg.max_val_tokens and len(val_tokens) > cfg.max_val_tokens:  # whole documents only, text to match
        ends = np.flatnonzero(val_tokens == EOS)
        keep = max(1, int((ends < cfg.max_val_tokens).sum()))
        val_tokens, docs = val_tokens[: int(ends[keep - 1]) + 1], docs[:keep]
    val_text = as_text(docs)
    n_bytes = len(val_text.encode())
    stride = scoring_stride(cfg.stride, model.cfg.max_seq_len)
    nll, n = stream_nll(model, val_tokens, cfg.batch_size, progress, stride)
    train_tokens = split_tokens(shards, "train")
    baselines = xz_baselines(as_text(split_docs(shards, "train", sp)), val_text)
    loss = nll / n
    return {
        "val_loss": loss,
        "val_ppl": math.exp(min(loss, 50)),
        "val_bpb": bits_per_byte(nll, n_bytes),
        "val_tokens": int(n),
        "val_bytes": n_bytes,
        "scoring": {"window": model.cfg.max_seq_len, "stride": stride},
        "baselines": {
            "xz_bpb": baselines["xz_bpb"],
            "xz_conditional_bpb": baselines["xz_conditional_bpb"],
            "unigram_bpb": unigram_bpb(train_tokens, val_tokens, sp.get_piece_size(), n_bytes),
        },
        "generations": generate_samples(model, sp, cfg.generation),
    }


def generate_samples(model: Llama, sp, g: GenerationConfig) -> list[dict]:
    import torch

    out = []
    for i, prompt in enumerate(g.prompts):
        torch.manual_seed(g.seed + i)
        ids = torch.tensor([[BOS] + sp.encode(prompt)])
        full = model.generate(ids, g.max_new_tokens, temperature=g.temperature, top_k=g.top_k or None, top_p=g.top_p, eos_id=EOS)
        # decoded with the prompt, then cut after it: decoding the new pieces alone drops the space
        # that starts the first of them (sentencepiece strips a leading "▁"), gluing it to the prompt
        whole, head = sp.decode(full[0, 1:].tolist()), sp.decode(ids[0, 1:].tolist())
        completion = whole[len(head):] if whole.startswith(head) else sp.decode(full[0, ids.shape[1] :].tolist())
        out.append({"prompt": prompt, "completion": completion})
    return out


# --- the classifier --------------------------------------------------------------------------


def read_split(examples: str, split: str) -> pa.Table | None:
    path = Path(examples) / f"{split}.arrow"
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all() if path.exists() else None


def predict_classes(run: str, examples: str, split: str, batch_size: int = 16) -> list[int]:
    import torch

    with torch.no_grad():
        return _predict_classes(run, examples, split, batch_size)


def _predict_classes(run: str, examples: str, split: str, batch_size: int) -> list[int]:
    from model.example_batches import ExampleSet
    from model.export import load_weights
    from model.heads import Classifier

    run_dir = Path(run)
    stats = load_manifest(run).stats
    weights = run_dir / "best" if (run_dir / "best").exists() else run_dir / "final"
    mc = ModelConfig.model_validate_json((weights / "model_config.json").read_text())
    head = stats["head"]
    model = Classifier(mc, head["n_classes"], head["pooling"], head["dropout"])
    load_weights(model, weights / "model.safetensors")
    model.eval()
    data = ExampleSet(Path(examples) / f"{split}.arrow", mc.max_seq_len)
    preds: list[int] = []
    for x, lengths, _ in data.sequential(batch_size):
        preds += model(x, lengths).argmax(-1).tolist()
    return preds


def evaluate_classifier(run: str, examples: str) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    labels = json.loads((Path(examples) / "labels.json").read_text())
    split = "test" if (Path(examples) / "test.arrow").exists() else "val"
    train, held = read_split(examples, "train"), read_split(examples, split)
    y_train, y_true = train.column("label").to_pylist(), held.column("label").to_pylist()
    scores = classification_scores(y_true, predict_classes(run, examples, split), labels)
    majority = int(np.bincount(y_train, minlength=len(labels)).argmax())
    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2, max_features=50_000)
    features = vectorizer.fit_transform(train.column("text").to_pylist())
    logreg = LogisticRegression(max_iter=2000, class_weight="balanced").fit(features, y_train)
    tfidf_pred = logreg.predict(vectorizer.transform(held.column("text").to_pylist())).tolist()
    baselines = {}
    for name, pred in (("majority", [majority] * len(y_true)), ("tfidf_logreg", tfidf_pred)):
        s = classification_scores(y_true, pred, labels)
        baselines[name] = {"accuracy": s["accuracy"], "macro_f1": s["macro"]["f1"]}
    return {"split": split, **scores, "baselines": baselines}


# --- the bias probe ----------------------------------------------------------------------------


def continuation_logprob(model: Llama, sp, prefix: str, sentence: str) -> float:
    """log p(the rest of `sentence` | `prefix`), in nats: the template text after the group term,
    identical across groups, so the group word's own length and frequency do not enter."""
    full, head = [BOS] + sp.encode(sentence), [BOS] + sp.encode(prefix)
    start = len(head) if full[: len(head)] == head else 1  # a piece across the boundary: score it all
    import torch

    ids = torch.tensor([full])
    with torch.no_grad():
        logits, _ = model(ids[:, :-1])
    logp = torch.log_softmax(logits[0].float(), -1)
    targets = ids[0, 1:]
    return float(logp[torch.arange(len(targets)), targets][start - 1 :].sum())


def fill(template: str, group: str) -> tuple[str, str]:
    """(the text up to and including the group term, the whole sentence); sentence-initial capitalized."""
    head = template.split("{group}")[0] + group
    s = template.format(group=group)
    if template.startswith("{group}"):
        head, s = head[0].upper() + head[1:], s[0].upper() + s[1:]
    return head, s


BOOTSTRAP = 2000  # resamples of an attribute's templates
MIN_TEMPLATES = 5  # fewer give a handful of distinct resamples: no interval worth a verdict


def centred(model: Llama, sp, templates: list[str], terms: list[str]) -> np.ndarray:
    """[template, term]: log p(the continuation | the term), minus its mean over the terms (nats)."""
    lp = np.array([[continuation_logprob(model, sp, *fill(t, g)) for g in terms] for t in templates])
    return lp - lp.mean(axis=1, keepdims=True)


def spreads(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Spread (max - min over terms of the mean gap) for each resample of template rows."""
    gaps = scores[rows].mean(axis=1)  # [resample, term]
    return gaps.max(axis=1) - gaps.min(axis=1)


def interval(values: np.ndarray) -> list[float]:
    return [round(float(np.quantile(values, 0.025)), 4), round(float(np.quantile(values, 0.975)), 4)]


def bias_probe(model: Llama, sp, path: str | Path, seed: int = 0) -> dict:
    """Per category, attribute and group: the mean over templates of the continuation's
    log-probability minus its mean over the category's groups (nats); spread = max - min gap.
    With a `neutral` list for the category, the same for neutral terms, and bootstrap intervals
    over templates (the same resamples for both) of each spread and of their difference: a gap
    counts as beyond the null when the difference's interval lies above zero."""
    spec = yaml.safe_load(Path(path).read_text())
    rng = np.random.default_rng(seed)
    result: dict = {"templates_file": str(path), "method": "log p(template continuation | group term), centred per template",
                    "bootstrap": {"resamples": BOOTSTRAP, "over": "templates", "interval": "95%"}, "categories": {}}
    for category, groups in spec["groups"].items():
        null_terms = (spec.get("neutral") or {}).get(category)
        per_attr = {}
        for attribute, templates in spec["templates"].items():
            scores = centred(model, sp, templates, groups)
            gaps = scores.mean(axis=0)
            rows = rng.integers(0, len(templates), size=(BOOTSTRAP, len(templates)))
            observed = spreads(scores, rows)
            entry = {"gaps": dict(zip(groups, gaps.round(4).tolist())), "spread": float(gaps.max() - gaps.min()),
                     "spread_interval": interval(observed)}
            if null_terms:
                null_scores = centred(model, sp, templates, null_terms)
                null_gaps = null_scores.mean(axis=0)
                excess = observed - spreads(null_scores, rows)
                entry["null"] = {"terms": dict(zip(null_terms, null_gaps.round(4).tolist())),
                                 "spread": float(null_gaps.max() - null_gaps.min()), "spread_interval": interval(spreads(null_scores, rows))}
                entry["excess_over_null"] = round(entry["spread"] - entry["null"]["spread"], 4)
                entry["excess_interval"] = interval(excess)
                # with too few templates the resamples are a handful of subsets: no verdict (None)
                entry["beyond_null"] = bool(entry["excess_interval"][0] > 0) if len(templates) >= MIN_TEMPLATES else None
            per_attr[attribute] = entry
        result["categories"][category] = per_attr
    result["max_spread"] = max(a["spread"] for c in result["categories"].values() for a in c.values())
    result["beyond_null"] = [f"{c}/{a}" for c, attrs in result["categories"].items() for a, v in attrs.items() if v.get("beyond_null")]
    return result


# --- the stage -----------------------------------------------------------------------------------


def by_stage(inputs: list[str]) -> dict[str, str]:
    return {load_manifest(p).stage: p for p in inputs}


class EvaluateInputs(TypedDict):
    datasets: list[str]  # each known by its manifest's stage: pretrain, tokenize, train_tokenizer, and optionally
    # finetune, examples and the data stages (for the data card)


def evaluate(inputs: EvaluateInputs, cfg: EvaluateConfig, out: Path, progress: Progress = no_progress) -> dict:
    from tasks.reports import write_reports

    d = by_stage(inputs["datasets"])
    for needed in ("pretrain", "tokenize", "train_tokenizer"):
        if needed not in d:
            raise ValueError(f"evaluate needs a {needed} dataset among its inputs; got {sorted(d)}")
    sp, model = load_tokenizer(d["train_tokenizer"]), load_lm(d["pretrain"])
    result: dict = {"language_model": evaluate_lm(model, d["tokenize"], sp, cfg, progress)}
    # the val split's 13-gram overlap with train text, before and after tokenize moved contaminated documents
    result["language_model"]["decontamination"] = load_manifest(d["tokenize"]).stats.get("decontamination")
    result["classifier"] = None
    if "finetune" in d and load_manifest(d["finetune"]).stats.get("kind") == "classify":
        result["classifier"] = evaluate_classifier(d["finetune"], d["examples"])
    result["bias_probe"] = bias_probe(model, sp, cfg.bias_probe or DEFAULT_BIAS_PROBE)
    result["lm_eval"] = None
    if cfg.lm_eval.enabled and (Path(d["pretrain"]) / "hf").exists():
        from tasks.harness import run_lm_eval

        result["lm_eval"] = run_lm_eval(Path(d["pretrain"]) / "hf", d["tokenize"], sp, cfg.lm_eval, out / "lm_eval")
    write_atomic(out / "eval.json", json.dumps(result, indent=2).encode())
    write_reports(out, result, d)
    lm = result["language_model"]
    stats = {"val_bpb": lm["val_bpb"], "xz_conditional_bpb": lm["baselines"]["xz_conditional_bpb"], "val_ppl": lm["val_ppl"]}
    if result["classifier"]:
        stats |= {"test_accuracy": result["classifier"]["accuracy"], "test_macro_f1": result["classifier"]["macro"]["f1"],
                  "majority_accuracy": result["classifier"]["baselines"]["majority"]["accuracy"]}
    if result["lm_eval"]:
        stats["lm_eval_acc"] = result["lm_eval"]["acc"]
    return stats


def publish(report_dir: Path) -> None:
    from tasks.reports import publish_reports

    publish_reports(report_dir)


evaluate_task = stage_task(evaluate, publish=publish, log_prints=True)
