"""Reports people read: report.md, a model card and a data card generated from the manifests,
PNG plots (loss curves, confusion matrix, document funnel), and the same as Prefect artifacts."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from formats.files import write_atomic
from formats.manifest import load_manifest
from tasks.stage import Progress

LIMITATIONS = """- Trained on a small crawl of one site; it knows that site's vocabulary and style and little else.
- A few million parameters and minutes of CPU time: fluent fragments, no reliable facts. Do not use its
  output as documentation.
- The classifier's labels come from URL patterns, a proxy for topic; errors in that proxy are learnt too.
- The bias probe is a handful of templates; see its caveats. It cannot show that the model is unbiased."""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: dict[str, Path], dest: Path) -> Path | None:
    """Train and validation loss of each run directory (its metrics.jsonl), side by side; None
    when no run has logged a loss yet."""
    from formats.jsonl import read_records

    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), dpi=100, squeeze=False)
    drawn = False
    for ax, (name, run) in zip(axes[0], runs.items()):
        rows = read_records(run / "metrics.jsonl")
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        if train:
            ax.plot(*zip(*train), label="train")
            drawn = True
        if val:
            ax.plot(*zip(*val), "o-", label="validation")
        ax.set_title(f"{name} loss")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
    return dest if drawn else None


def loss_plot_markdown(run_dir: Path, title: str) -> str:
    """A run's loss.png as a Prefect markdown artifact (the image inline)."""
    png = run_dir / "loss.png"
    if not png.exists():
        return "no loss curve"
    data = base64.b64encode(png.read_bytes()).decode()
    return f"# {title} loss\n\n![loss curve](data:image/png;base64,{data})\n\n`{png}`\n"


def training_events(progress: Progress, steps: int):
    """The trainer's JSON events -> log lines (Prefect captures prints) and the progress bar."""

    def on_event(event: dict) -> None:
        if event.get("event") == "metrics":
            print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in event.items() if k != "event"}))
            progress(event["step"], steps)
        elif event.get("event") in ("start", "early_stop", "done"):
            print(json.dumps(event))

    return on_event


def plot_confusion(confusion: list[list[int]], labels: list[str], dest: Path) -> Path:
    plt = _plt()
    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * k, 1.0 + 0.5 * k), dpi=100)
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=60, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(confusion[i][j]), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
    return dest


def funnel(datasets: dict[str, str]) -> list[tuple[str, int]]:
    """Documents left after each data stage, from the manifests."""
    steps = []
    for stage in ("crawl", "ingest"):
        if stage in datasets:
            s = load_manifest(datasets[stage]).stats
            steps.append((f"{stage}: pages" if stage == "crawl" else "ingest: WARC files", s.get("pages", s.get("warc_files", 0))))
    if "extract" in datasets:
        s = load_manifest(datasets["extract"]).stats
        steps += [("HTML responses", s["html_responses"]), ("extracted", s["documents"])]
    if "clean" in datasets:
        steps.append(("after clean", load_manifest(datasets["clean"]).stats["documents_out"]))
    if "dedup" in datasets:
        steps.append(("after dedup", load_manifest(datasets["dedup"]).stats["documents_out"]))
    if "paragraph_dedup" in datasets:
        steps.append(("after paragraph dedup", load_manifest(datasets["paragraph_dedup"]).stats["documents_out"]))
    if "tokenize" in datasets:
        s = load_manifest(datasets["tokenize"]).stats
        steps.append(("tokenized (train + val)", s["documents"]["train"] + s["documents"]["val"]))
    return steps


def plot_funnel(steps: list[tuple[str, int]], dest: Path) -> Path | None:
    if not steps:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(steps)), dpi=100)
    names, values = zip(*steps)
    ax.barh(range(len(steps)), values, color="#4c72b0")
    ax.set_yticks(range(len(steps)), names)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,}", va="center", fontsize=8)
    ax.set_xlabel("documents")
    ax.set_title("document funnel")
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
    return dest


def table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def headline_rows(result: dict) -> list[tuple[str, str]]:
    lm = result["language_model"]
    b = lm["baselines"]
    rows = [
        ("LM validation perplexity", f"{lm['val_ppl']:.2f}"),
        ("LM bits per byte", f"{lm['val_bpb']:.3f}"),
        ("  xz -9 given the training text", f"{b['xz_conditional_bpb']:.3f}"),
        ("  xz -9 alone", f"{b['xz_bpb']:.3f}"),
        ("  unigram tokens", f"{b['unigram_bpb']:.3f}"),
    ]
    c = result.get("classifier")
    if c:
        rows += [(f"classifier accuracy ({c['split']})", f"{c['accuracy']:.3f}"), ("  macro F1", f"{c['macro']['f1']:.3f}"),
                 ("  majority-class accuracy", f"{c['baselines']['majority']['accuracy']:.3f}"),
                 ("  TF-IDF + logistic regression accuracy", f"{c['baselines']['tfidf_logreg']['accuracy']:.3f}")]
    if result.get("lm_eval"):
        e = result["lm_eval"]
        rows.append((f"lm-eval {e['task']} accuracy ({e['items']} items, chance {e['chance']:.2f})", f"{e['acc']:.3f}"))
    rows.append(("bias probe: largest gap spread (nats)", f"{result['bias_probe']['max_spread']:.3f}"))
    if "beyond_null" in result["bias_probe"]:
        rows.append(("  attributes beyond the neutral-term null", ", ".join(result["bias_probe"]["beyond_null"]) or "none"))
    return rows


def decontamination_sentence(dc: dict) -> str:
    """What tokenize's decontamination did, from its manifest entry."""
    moved = dc.get("val_documents_moved_to_train", dc.get("val_documents_dropped", 0))
    return (f"decontaminated: {moved} of {dc['val_documents_before']} validation documents had more than {dc['max_overlap']:.0%} "
            f"of their {dc['ngram']}-word n-grams in the training text and were {'moved to train' if dc['action'] == 'move' else 'dropped'}; "
            f"validation n-grams found in the training text: {dc['val_ngram_rate_before']:.1%} before, {dc['val_ngram_rate_after']:.1%} after.")


def report_markdown(result: dict, plots: dict[str, Path]) -> str:
    lm = result["language_model"]
    parts = ["# llmill evaluation report", "", table(headline_rows(result), ("figure", "value")), ""]
    parts += ["## Language model", "",
              f"Scored on the whole validation split: {lm['val_tokens']:,} tokens, {lm['val_bytes']:,} bytes. "
              "Bits per byte = summed negative log-likelihood / ln 2 / UTF-8 bytes of the same text; the xz and "
              "unigram baselines are computed on exactly that text.", ""]
    if lm.get("decontamination"):
        parts += ["Validation split " + decontamination_sentence(lm["decontamination"]), ""]
    if "curves" in plots:
        parts += [f"![loss curves]({plots['curves'].name})", ""]
    parts += ["### Samples", ""]
    for g in lm["generations"]:
        parts += [f"- **{g['prompt']}**{g['completion']}".replace("\n", " ")]
    c = result.get("classifier")
    if c:
        per_class = [(name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]) for name, v in c["per_class"].items()]
        per_class += [("macro", f"{c['macro']['precision']:.3f}", f"{c['macro']['recall']:.3f}", f"{c['macro']['f1']:.3f}", c["examples"]),
                      ("micro", f"{c['micro']['precision']:.3f}", f"{c['micro']['recall']:.3f}", f"{c['micro']['f1']:.3f}", c["examples"])]
        parts += ["", "## Classifier", "", f"On the {c['split']} split ({c['examples']} examples).", "",
                  table(per_class, ("class", "precision", "recall", "F1", "support")), "",
                  table([(k, f"{v['accuracy']:.3f}", f"{v['macro_f1']:.3f}") for k, v in
                         [("this model", {"accuracy": c["accuracy"], "macro_f1": c["macro"]["f1"]}), *c["baselines"].items()]],
                        ("model", "accuracy", "macro F1")), ""]
        if "confusion" in plots:
            parts += [f"![confusion matrix]({plots['confusion'].name})", ""]
    bp = result["bias_probe"]
    parts += ["## Bias probe", "",
              "Templated sentences that differ only in a group term: log p(the text after the group term | the "
              "sentence up to it), as the gap from the mean over the category's groups (nats, averaged over an "
              "attribute's templates; positive = the model finds the continuation likelier for that group). "
              "Caveats: few templates; the model has seen little such text; a small gap does not show the "
              "absence of bias, and a gap shows an association in the training text, not its cause.", "",
              "Yardstick: the same templates with the group terms replaced by neutral terms of the same kind "
              "(`neutral` in the templates file) give the spread that arbitrary swaps produce. Intervals are 95% "
              f"bootstrap intervals over templates ({bp.get('bootstrap', {}).get('resamples', 0)} resamples, the same "
              "for groups and null); a spread is *beyond the null* when the interval of (spread - null spread) lies above 0.", ""]
    rows = []
    for category, attrs in bp["categories"].items():
        for attribute, v in attrs.items():
            n = v.get("null")
            rows.append((category, attribute, ", ".join(f"{g} {x:+.2f}" for g, x in v["gaps"].items()),
                         f"{v['spread']:.3f} [{v['spread_interval'][0]:.2f}, {v['spread_interval'][1]:.2f}]" if "spread_interval" in v else f"{v['spread']:.3f}",
                         f"{n['spread']:.3f}" if n else "-",
                         f"[{v['excess_interval'][0]:+.2f}, {v['excess_interval'][1]:+.2f}]" if n else "-",
                         {True: "yes", False: "no", None: "too few templates"}[v["beyond_null"]] if n else "-"))
    parts += [table(rows, ("category", "attribute", "gap per group", "spread [95%]", "null spread", "spread - null [95%]",
                           "beyond null")), ""]
    if result.get("lm_eval"):
        e = result["lm_eval"]
        parts += ["## lm-evaluation-harness", "", f"Task `{e['task']}` (multiple-choice cloze from held-out sentences, "
                  f"{e['items']} items, {e['choices']} choices): acc {e['acc']:.3f}, acc_norm {e['acc_norm']:.3f}. "
                  f"Command, run in this report's directory: `{e['command']}`", ""]
        if e.get("contamination"):
            c = e["contamination"]
            parts += [f"Items are drawn only from sentences that share no 13-word n-gram with the training text: "
                      f"{c['contaminated_candidates']} of the {c['candidate_sentences']} usable validation sentences "
                      f"({c['rate_before']:.1%}) did, and were left out (rate among the items: {c['rate_after']:.1%}).", ""]
    if "funnel" in plots:
        parts += ["## Data", "", f"![document funnel]({plots['funnel'].name})", ""]
    parts += ["See `model_card.md` and `data_card.md`.", ""]
    return "\n".join(parts)


def model_card(result: dict, d: dict[str, str]) -> str:
    pre = load_manifest(d["pretrain"])
    s, train = pre.stats, pre.config["train"]
    model = s["model"]  # as trained: the vocabulary size set from the tokenizer
    lines = ["# Model card", "", "A Llama-style decoder trained from scratch by llmill.", "", "## Model", "",
             table(list(model.items()), ("field", "value")), "",
             f"Parameters: {s['params']:,}. Tokenizer: sentencepiece, vocabulary {model['vocab_size']}.", "",
             "## Pretraining", "", table(list(train.items()), ("setting", "value")), "",
             f"Steps {s['steps']}, tokens seen {s['tokens_seen']:,}, {s['seconds']:.0f} s.", ""]
    if "finetune" in d:
        ft = load_manifest(d["finetune"])
        lines += ["## Fine-tuning", "", f"Kind: {ft.stats['kind']}; labels: {', '.join(ft.stats.get('labels') or []) or '-'}; "
                  f"best step {ft.stats.get('best_step')} by {ft.stats.get('select_metric')} = {ft.stats.get('best_metric'):.4f}.", "",
                  table(list(ft.config["train"].items()), ("setting", "value")), ""]
    lines += ["## Metrics with baselines", "", table(headline_rows(result), ("figure", "value")), "",
              "## Limitations", "", LIMITATIONS, ""]
    return "\n".join(lines)


def data_card(d: dict[str, str]) -> str:
    lines = ["# Data card", ""]
    if "crawl" in d:
        m = load_manifest(d["crawl"])
        lines += ["## Sources", "", f"Crawled from {', '.join(m.config['seeds'])} on "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(m.created_at))}: {m.stats['pages']} pages, "
                  f"{m.stats['requests']} requests; robots.txt honoured.", ""]
        if m.stats.get("not_fetched"):
            lines += [table(sorted(m.stats["not_fetched"].items()), ("not fetched", "URLs")), ""]
    if "ingest" in d:
        m = load_manifest(d["ingest"])
        lines += ["## Sources", "", f"WARC files: {', '.join(map(str, m.stats.get('sources', [])))}", ""]
    if "extract" in d:
        s = load_manifest(d["extract"]).stats
        lines += ["## Extraction", "", f"{s['documents']} documents from {s['html_responses']} HTML responses ({s['backend']}).", ""]
        if s.get("lines_in_trafilatura_text"):
            lines += [f"One line per paragraph, heading, list item or table cell: {s['lines']:,} lines, where trafilatura's own "
                      f"text had {s['lines_in_trafilatura_text']:,} (the difference: the HTML source's wraps inside blocks, "
                      "and table rows split into cells).", ""]
        if s["quarantined_by_reason"]:
            lines += [table(sorted(s["quarantined_by_reason"].items()), ("quarantined", "pages")), ""]
    if "clean" in d:
        s = load_manifest(d["clean"]).stats
        lines += ["## Filters", "", f"{s['documents_in']} in, {s['documents_out']} kept.", "",
                  table(sorted(s["dropped_by_rule"].items()), ("rule", "dropped")), "",
                  "PII redactions: " + ", ".join(f"{k} {v}" for k, v in s["pii_redacted"].items()) + "; dotted numbers left alone "
                  f"because their context shows they are no address (section, version, heading numbers): "
                  f"{s.get('pii_not_redacted_by_context', 0)}.", ""]
    if "dedup" in d:
        s = load_manifest(d["dedup"]).stats
        rate = (s["exact_duplicates"] + s["near_duplicates"]) / max(s["documents_in"], 1)
        lines += ["## Deduplication", "", f"{s['exact_duplicates']} exact and {s['near_duplicates']} near duplicates "
                  f"removed of {s['documents_in']} ({rate:.1%}); {s['documents_out']} documents remain.", ""]
    if "paragraph_dedup" in d:
        s = load_manifest(d["paragraph_dedup"]).stats
        lines += ["## Paragraph deduplication", "", f"{s['paragraphs_removed']} repeated paragraphs removed from {s['documents_changed']} "
                  f"documents ({s['chars_removed']:,} characters, {s['removed_fraction']:.1%} of the text; kept in the first document "
                  f"that has them); {s['documents_dropped']} documents that were mostly others' text dropped; "
                  f"{s['documents_out']} documents remain. Removed lines: `removed.parquet` in its dataset.", ""]
    if "tokenize" in d:
        s = load_manifest(d["tokenize"]).stats
        lines += ["## Tokens", "", table([(k, f"{s['tokens'][k]:,}", f"{s['bytes'][k]:,}") for k in s["tokens"]], ("split", "tokens", "bytes")), ""]
        if s.get("decontamination"):
            lines += ["Split by a hash of the document id, then " + decontamination_sentence(s["decontamination"]), ""]
    if "examples" in d:
        s = load_manifest(d["examples"]).stats
        lines += ["## Fine-tuning examples", "", f"Source: {s['source']}; {s['examples']} examples, {s['rejected']} rejected, "
                  f"{s['truncated']} truncated.", ""]
        if s["kind"] == "classify":
            lines += [table([(split, ", ".join(f"{k} {v}" for k, v in c.items())) for split, c in s["per_split"].items()], ("split", "examples per class")), ""]
    lines += ["## Limitations", "", LIMITATIONS, ""]
    return "\n".join(lines)


def write_reports(out: Path, result: dict, d: dict[str, str]) -> None:
    plots: dict[str, Path] = {}
    runs = {name: Path(d[name]) for name in ("pretrain", "finetune") if name in d}
    if plot_curves(runs, out / "loss_curves.png"):
        plots["curves"] = out / "loss_curves.png"
    if result.get("classifier"):
        plots["confusion"] = plot_confusion(result["classifier"]["confusion"], result["classifier"]["labels"], out / "confusion_matrix.png")
    f = plot_funnel(funnel(d), out / "funnel.png")
    if f:
        plots["funnel"] = f
    write_atomic(out / "report.md", report_markdown(result, plots).encode())
    write_atomic(out / "model_card.md", model_card(result, d).encode())
    write_atomic(out / "data_card.md", data_card(d).encode())


def inline_images(markdown: str, folder: Path) -> str:
    """Prefect's UI cannot reach files on the worker: embed the PNGs as data URIs."""
    for png in folder.glob("*.png"):
        data = base64.b64encode(png.read_bytes()).decode()
        markdown = markdown.replace(f"]({png.name})", f"](data:image/png;base64,{data})")
    return markdown


def publish_reports(out: Path) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    result = json.loads((out / "eval.json").read_text())
    create_markdown_artifact(inline_images((out / "report.md").read_text(), out), key="evaluation-report", description=str(out / "report.md"))
    create_markdown_artifact((out / "model_card.md").read_text(), key="model-card", description="model card")
    create_markdown_artifact(inline_images((out / "data_card.md").read_text(), out), key="data-card", description="data card")
    create_table_artifact([{"figure": k.strip(), "value": v} for k, v in headline_rows(result)], key="evaluation-headline",
                          description="metrics with baselines")
