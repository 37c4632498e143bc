"""How lm-eval is started: its arguments and its environment."""

from pathlib import Path

import pytest

from tasks.evaluate import LmEvalConfig
from tasks.harness import lm_eval_command, lm_eval_env


def test_a_model_path_that_would_add_lm_eval_arguments_is_refused(tmp_path):
    fine = lm_eval_command(tmp_path / "hf", tmp_path, LmEvalConfig())
    assert fine[fine.index("--model_args") + 1] == f"pretrained={tmp_path / 'hf'},dtype=float32"
    for hostile in ("run,trust_remote_code=True", "run=x"):
        with pytest.raises(ValueError, match="lm-eval cannot be given a model path"):
            lm_eval_command(Path(tmp_path / hostile / "hf"), tmp_path, LmEvalConfig())


def test_lm_eval_runs_without_the_prefect_and_object_store_credentials():
    base = {"PATH": "/usr/bin", "PREFECT_API_URL": "http://127.0.0.1:4200/api", "PREFECT_API_AUTH_STRING": "admin:secret",
            "PREFECT_API_KEY": "pnu_x", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"}
    assert lm_eval_env(base) == {"PATH": "/usr/bin", "PREFECT_API_URL": "http://127.0.0.1:4200/api"}


def test_cloze_items_come_only_from_sentences_the_training_text_does_not_hold():
    from tasks.contamination import ngram_index
    from tasks.harness import cloze_candidates, cloze_items, contaminated

    own = [f"The {w} module handles every request that arrives on the socket before the {end}." for w, end in
           zip(("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"),
               ("timer", "deadline", "shutdown", "restart", "handshake", "reply", "close", "flush"))]
    copied = [f"This sentence about the {w} parser was copied verbatim from a training page into the held out {end}." for w, end in
              zip(("lexer", "grammar", "token", "syntax"), ("split", "section", "chapter", "page"))]
    train = ngram_index([" ".join(copied) + " and more training text around it"])
    assert sum(contaminated(c, train) for c in cloze_candidates([" ".join(own + copied)])) == len(copied)
    items = cloze_items([" ".join(own + copied)], items=8, choices=4, train_ngrams=train)
    assert len(items) == 8 and not any("copied verbatim" in i["context"] for i in items)
    # without the index the copied sentences are candidates too
    assert any("copied verbatim" in i["context"] for i in cloze_items([" ".join(own + copied)], items=12, choices=4))
