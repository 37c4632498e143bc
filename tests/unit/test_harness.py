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
