"""Fine-tuning for real: a classifier on a small real labelled set (python3.11-doc pages by
section) beats the majority baseline, with metrics equal to scikit-learn's; SFT runs and exports;
bad labelled data gets clear errors or documented truncation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest

from formats.manifest import load_manifest
from tasks.evaluate import evaluate_classifier, predict_classes, read_split
from tasks.examples import VERSION as EXAMPLES_VERSION
from tasks.examples import ExamplesConfig, ExamplesError, examples
from tasks.finetune import FinetuneConfig, FinetuneTrainConfig, finetune
from tasks.labelled import VERSION as LABELLED_VERSION
from tasks.labelled import LabelledConfig, labelled
from tasks.stage import run_stage
from tests.corpus import library_texts, section_examples, write_examples_csv

CONTEXT = 128


pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def pretrained(shared_root, library_corpus, pretrained_lm):
    """The suite's shared corpus and its 300-step pretraining (conftest.py)."""
    docs, tok, _ = library_corpus
    return shared_root, docs, tok, pretrained_lm


def make_examples(root: Path, docs: str, tok: str, run: str, rows: list[dict] | None = None, path: Path | None = None, **cfg) -> str:
    """The flow's two stages: the labelled file taken into the root, then the examples, whose
    length the pretrained model's context bounds (test-tiny: CONTEXT)."""
    if path is None:
        path = write_examples_csv(root / f"labelled-{abs(hash(json.dumps(rows))) % 10**8}.csv", rows)
    data = run_stage("labelled", LABELLED_VERSION, labelled, {}, LabelledConfig(path=str(path)), root)
    return str(run_stage("examples", EXAMPLES_VERSION, examples, {"documents": docs, "tokenizer": tok, "pretrain": run, "labelled": str(data)}, ExamplesConfig(**cfg), root))


def test_classifier_beats_the_majority_baseline(pretrained):
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    root, docs, tok, run = pretrained
    ex = make_examples(root, docs, tok, run, section_examples(per_class=60))
    stats = load_manifest(ex).stats
    assert stats["labels"] == ["c-api", "guide", "library", "whatsnew"] and stats["truncated"] > 0
    assert stats["max_tokens"] == CONTEXT  # the pretrained model's context, read from the run
    cfg = FinetuneConfig(train=FinetuneTrainConfig(steps=150, micro_batch_size=16, eval_every=25, checkpoint_every=50,
                                                   trackers=[], threads_per_process=0, log_every=25),
                         balance_classes=True)
    ft = run_stage("finetune", 1, finetune, {"examples": ex, "pretrain": run, "tokenizer": tok}, cfg, root, resumable=True)
    summary = load_manifest(ft).stats
    assert (Path(ft) / "best" / "model.safetensors").exists() and summary["select_metric"] == "val_accuracy"
    assert json.loads((Path(ft) / "best" / "info.json").read_text())["step"] == summary["best_step"]

    result = evaluate_classifier(str(ft), ex)
    majority = result["baselines"]["majority"]["accuracy"]
    assert result["accuracy"] > majority + 0.15, (result["accuracy"], majority)
    # the same predictions scored by scikit-learn
    y_true = read_split(ex, "test").column("label").to_pylist()
    y_pred = predict_classes(str(ft), ex, "test")
    assert result["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert result["macro"]["f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert result["macro"]["precision"] == pytest.approx(precision_score(y_true, y_pred, average="macro", zero_division=0))
    assert result["macro"]["recall"] == pytest.approx(recall_score(y_true, y_pred, average="macro", zero_division=0))
    assert sum(map(sum, result["confusion"])) == len(y_true)


def test_sft_trains_on_responses_and_exports(pretrained, tmp_path):
    root, docs, tok, run = pretrained
    rows = []
    for text in library_texts(40):
        lines = [l for l in text.splitlines() if len(l.split()) > 4]
        if len(lines) >= 2:
            rows.append({"prompt": "Explain: " + lines[0], "response": " " + lines[1]})
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = make_examples(root, docs, tok, run, path=path, kind="sft", test_fraction=0.0)
    table = pa.ipc.open_file(str(Path(ex) / "train.arrow")).read_all()
    labels, ids = table.column("labels").to_pylist()[0], table.column("input_ids").to_pylist()[0]
    assert labels[0] == -100 and labels[-1] == ids[-1] == 3  # <s> masked, </s> learnt
    cfg = FinetuneConfig(train=FinetuneTrainConfig(steps=20, micro_batch_size=8, eval_every=10, checkpoint_every=10,
                                                   trackers=[], threads_per_process=0, select_metric="val_loss"))
    ft = run_stage("finetune", 1, finetune, {"examples": ex, "pretrain": run, "tokenizer": tok}, cfg, root, resumable=True)
    stats = load_manifest(ft).stats
    assert stats["kind"] == "sft" and stats["val_loss"] < 20
    assert (Path(ft) / "hf" / "config.json").exists() and (Path(ft) / "hf" / "tokenizer.json").exists()


def test_bad_labelled_data_gets_clear_errors(pretrained, tmp_path):
    root, docs, tok, run = pretrained
    text = "A sentence about the json module and its encoder."
    with pytest.raises(ExamplesError, match="at least 2 classes"):
        make_examples(root, docs, tok, run, [{"text": f"{text} {i}", "label": "only"} for i in range(20)])
    with pytest.raises(ExamplesError, match=r"columns \['body', 'category'\] do not include the classify columns label/text"):
        make_examples(root, docs, tok, run, [{"body": text, "category": "a"}, {"body": text, "category": "b"}])
    with pytest.raises(ExamplesError, match=r"labels \['rare'\] occur in val/test but not in the training split"):
        rows = [{"text": f"{text} {i}", "label": "ab"[i % 2], "split": "train"} for i in range(20)]
        make_examples(root, docs, tok, run, rows + [{"text": text, "label": "rare", "split": "test"}])
    with pytest.raises(ExamplesError, match="does not exist"):
        make_examples(root, docs, tok, run, path=tmp_path / "missing.csv")
    with pytest.raises(ExamplesError, match="all 2 rows were rejected"):
        make_examples(root, docs, tok, run, [{"text": "", "label": "a"}, {"text": "  ", "label": "b"}])

    # empty texts: rejected with their reason, the rest kept
    rows = [{"text": f"{text} {i}", "label": "ab"[i % 2]} for i in range(30)] + [{"text": " ", "label": "a"}]
    ex = make_examples(root, docs, tok, run, rows, val_fraction=0.0, test_fraction=0.0)
    assert load_manifest(ex).stats["rejected"] == 1
    assert json.loads((Path(ex) / "rejected.jsonl").read_text()) == {"row": 30, "reason": "empty text"}

    # SFT rows without a response are rejected with their reason
    path = tmp_path / "no-response.jsonl"
    path.write_text(json.dumps({"prompt": "Explain json.", "response": " It encodes."}) + "\n" + json.dumps({"prompt": "Explain os.", "response": ""}) + "\n")
    ex = make_examples(root, docs, tok, run, path=path, kind="sft", val_fraction=0.0, test_fraction=0.0)
    assert json.loads((Path(ex) / "rejected.jsonl").read_text()) == {"row": 1, "reason": "empty response"}

    # a prompt longer than the context: documented truncation, the response keeps at least half
    long_prompt = " ".join(library_texts(1)[0].split()[:600])
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"prompt": long_prompt, "response": " Short answer."}) + "\n")
    ex = make_examples(root, docs, tok, run, path=path, kind="sft", val_fraction=0.0, test_fraction=0.0)
    stats = load_manifest(ex).stats
    assert stats["truncated"] == 1
    table = pa.ipc.open_file(str(Path(ex) / "train.arrow")).read_all()
    ids, labels = table.column("input_ids").to_pylist()[0], table.column("labels").to_pylist()[0]
    assert len(ids) == CONTEXT + 1 and ids[0] == 2 and ids[-1] == 3
    import sentencepiece as spm

    response = spm.SentencePieceProcessor(model_file=str(Path(tok) / "tokenizer.model")).encode(" Short answer.") + [3]
    assert [l for l in labels if l != -100] == response == ids[-len(response):]  # the whole response kept and learnt


def test_lm_scores_and_baselines_use_exactly_the_val_text(pretrained, library_corpus):
    import lzma

    from formats.token_shards import split_of
    from formats.tokenizer import load_tokenizer
    from tasks.evaluate import EvaluateConfig, evaluate_lm, load_lm
    from tasks.token_encoding import TokenizeConfig

    root, docs, tok, run = pretrained
    shards = library_corpus[2]
    texts, split = library_texts(120), TokenizeConfig(val_fraction=0.1)
    val_text = "".join(t + "\n" for i, t in enumerate(texts) if split_of(f"lib-{i:04d}", split.seed, split.val_fraction) == "val")
    result = evaluate_lm(load_lm(run), shards, load_tokenizer(tok), EvaluateConfig(generation={"max_new_tokens": 4}))
    assert result["val_bytes"] == len(val_text.encode())
    assert result["baselines"]["xz_bpb"] == pytest.approx(8 * len(lzma.compress(val_text.encode(), preset=9)) / len(val_text.encode()))
    assert result["val_tokens"] == load_manifest(shards).stats["tokens"]["val"]  # every val token scored
    window = load_lm(run).cfg.max_seq_len
    assert result["scoring"] == {"window": window, "stride": window // 2}  # windows half a context apart by default
    assert result["val_bpb"] == pytest.approx(result["val_loss"] * result["val_tokens"] / math.log(2) / result["val_bytes"])
    assert len(result["generations"]) == 4


def test_samples_keep_the_space_between_prompt_and_continuation(pretrained):
    from formats.tokenizer import load_tokenizer
    from tasks.evaluate import GenerationConfig, generate_samples, load_lm

    _, _, tok, run = pretrained
    sp, prompts = load_tokenizer(tok), [f"The {w}" for w in ("json module", "file", "list", "class", "function", "value", "string", "path")]
    samples = generate_samples(load_lm(run), sp, GenerationConfig(prompts=prompts, max_new_tokens=6))
    # before: `**The json module**is bound`: a continuation that starts a word lost its space
    assert any(s["completion"].startswith(" ") for s in samples), samples
