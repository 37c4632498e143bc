"""The whole pipeline at test-tiny size under a real Prefect server: data -> pretrain -> finetune
(labels derived from the pages' URLs) -> evaluate gives eval.json with every key, the plots, the
cards and the artifacts; a second run is answered from cache, task by task."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.llmill_config import LlmillConfig
from flows.pipeline_flow import pipeline_flow
from tasks.harness import lm_eval_env
from tests.helpers import all_task_states

EVAL_KEYS = {
    "language_model": {"val_loss", "val_ppl", "val_bpb", "val_tokens", "val_bytes", "scoring", "baselines", "generations", "decontamination"},
    "classifier": {"split", "examples", "accuracy", "macro", "micro", "per_class", "confusion", "labels", "baselines"},
    "bias_probe": {"templates_file", "method", "categories", "max_spread", "bootstrap", "beyond_null"},
    "lm_eval": {"task", "items", "choices", "chance", "acc", "acc_norm", "command", "contamination"},
}


@pytest.mark.prefect_server
@pytest.mark.trainer
def test_pipeline_end_to_end_then_all_cached(prefect_harness, tiny_pipeline, tmp_path):
    # the datasets may already be on the shared root (the served runs of test_serve compute the
    # same ones); this server's task cache is new to them, so every stage runs as a task here
    config = LlmillConfig.model_validate(tiny_pipeline)
    state = pipeline_flow(config, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    stages = {"ingest", "extract", "clean", "dedup", "paragraph_dedup", "train_tokenizer", "tokenize", "pretrain", "examples", "finetune",
              "evaluate"}
    states = all_task_states(state.state_details.flow_run_id, stages)
    assert stages <= states.keys() and all(states[s] == "Completed" for s in stages), states

    report = Path(result["report"])
    evaluation = json.loads((report / "eval.json").read_text())
    for section, keys in EVAL_KEYS.items():
        assert keys <= evaluation[section].keys(), (section, evaluation[section])
    assert set(evaluation["language_model"]["baselines"]) == {"xz_bpb", "xz_conditional_bpb", "unigram_bpb"}
    assert evaluation["classifier"]["labels"] == ["c-api", "howto", "library", "reference", "tutorial", "whatsnew"]
    assert set(evaluation["classifier"]["baselines"]) == {"majority", "tfidf_logreg"}
    assert 0 <= evaluation["lm_eval"]["acc"] <= 1 and evaluation["lm_eval"]["items"] == 8
    # the recorded command runs as recorded once the dataset is committed (before: it named the
    # stage's .partial directory, gone by then); here in a copy, to leave the dataset as committed
    copy = tmp_path / "evaluate-copy"
    shutil.copytree(report, copy)
    shutil.rmtree(copy / "lm_eval" / "results")
    rerun = subprocess.run(shlex.split(evaluation["lm_eval"]["command"].replace("python", sys.executable, 1)), cwd=copy,
                           env={**lm_eval_env(os.environ), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert list((copy / "lm_eval" / "results").rglob("results_*.json"))
    for name in ("loss_curves.png", "confusion_matrix.png", "funnel.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    text = (report / "report.md").read_text()
    assert "xz -9 given the training text" in text and "majority-class accuracy" in text and "Bias probe" in text
    assert "beyond null" in text and "Items are drawn only from sentences that share no 13-word n-gram" in text
    assert evaluation["lm_eval"]["contamination"]["rate_after"] == 0.0
    for attrs in evaluation["bias_probe"]["categories"].values():  # every attribute against its neutral-term null
        for v in attrs.values():
            assert v["null"]["spread"] >= 0 and v["excess_interval"][0] <= v["excess_interval"][1]
    dc = evaluation["language_model"]["decontamination"]
    assert dc["val_ngram_rate_after"] <= dc["val_ngram_rate_before"] and "decontaminated" in (report / "data_card.md").read_text()
    card = (report / "data_card.md").read_text()
    assert "## Deduplication" in card and "## Paragraph deduplication" in card and "## Filters" in card and "PII redactions" in card and "## Limitations" in card
    model_card = (report / "model_card.md").read_text()
    assert "## Pretraining" in model_card and "## Fine-tuning" in model_card and "## Metrics with baselines" in model_card

    from prefect import get_client

    with get_client(sync_client=True) as client:
        for key in ("evaluation-report", "model-card", "data-card", "evaluation-headline", "pretrain-loss-curve"):
            artifact = client.read_latest_artifacts(limit=50)
            assert any(a.key == key for a in artifact), key

    again = pipeline_flow(config, return_state=True)
    assert again.is_completed() and again.result() == result
    states = all_task_states(again.state_details.flow_run_id, stages)
    assert stages <= states.keys() and all(states[s] == "Cached" for s in stages), states
