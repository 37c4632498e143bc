"""`llmill run` as `make run` calls it: the demo on builtin:pydoc, offline, summary printed."""

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tasks.pydoc_site import serve_pydoc
from tests.corpus import section_examples, write_examples_csv

ROOT = Path(__file__).resolve().parents[2]


def test_pydoc_site_serves_the_stdlib_only():
    with serve_pydoc() as base:
        assert base.startswith("http://127.0.0.1:")
        assert b"Disallow: /getfile" in urllib.request.urlopen(base + "robots.txt").read()
        assert b"JSON" in urllib.request.urlopen(base + "json.html").read()
        # import side effects: a window, a browser, printing, or `venv.__main__` creating a venv
        for blocked in ("antigravity.html", "this.html", "tkinter.html", "pytest.html", "prefect.html", "venv.__main__.html", "unittest.__main__.html"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + blocked)
            assert e.value.code == 404, blocked
        index = urllib.request.urlopen(base).read()
        assert b"prefect" not in index and b"json" in index  # site-packages stay off the path


def test_pydoc_pages_show_nothing_of_the_caller_and_no_address(monkeypatch):
    """Pages render the server's environment (cgi's `environ=os.environ`), argv (sys) and object
    addresses: none of the caller's secrets, no port, no address, so every run serves the same."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "llmill-canary-secret")
    with serve_pydoc() as base:
        port = base.rsplit(":", 1)[1].strip("/")
        pages = {name: urllib.request.urlopen(base + name).read().decode() for name in ("cgi.html", "sys.html", "configparser.html", "ctypes.html")}
    assert "environ" in pages["cgi.html"] and "llmill-canary-secret" not in pages["cgi.html"]
    assert "argv" in pages["sys.html"] and f"'{port}'" not in pages["sys.html"]
    assert "interpolation=" in pages["configparser.html"]
    for name, page in pages.items():
        assert not re.search(r"(?: |&nbsp;)at(?: |&nbsp;)0x[0-9a-f]{6,}", page), name
        assert not re.search(r"handle(?: |&nbsp;)[0-9a-f]{8,}", page), name


@pytest.mark.prefect_server  # the embedded one, from a fresh PREFECT_HOME: what `make run` does on a new machine
@pytest.mark.trainer
def test_llmill_run_on_builtin_pydoc(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    # the demo's crawl as it is (8 at once, any port): the same 40 pages under the same URLs every
    # time, so the same documents fall in the val split, which lm-eval's cloze items are drawn from
    # uncompiled: compiling 20 steps cost 22 s here (31 s cold), and the compiled trainer has its own
    # tests (compiled training against eager; bf16 DDP and FSDP in gpu_check)
    small = ["crawl.max_pages=40", "tokenizer.vocab_size=512", "pretrain.model.preset=test-tiny", "pretrain.train.steps=20",
             "pretrain.train.eval_every=10", "tokenize.val_fraction=0.2", "pretrain.train.checkpoint_every=10", "pretrain.train.micro_batch_size=4", "pretrain.train.compile=false",
             f"finetune.examples.path={write_examples_csv(tmp_path / 'sections.csv', section_examples(per_class=30))}",
             "finetune.train.steps=20", "finetune.train.eval_every=10", "evaluate.lm_eval.items=8", "evaluate.generation.max_new_tokens=8"]
    cmd = [sys.executable, "-m", "flows.cli", "run", "--set", f"root={tmp_path / 'data'}"]
    for assignment in small:
        cmd += ["--set", assignment]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for label in ("pages crawled", "documents extracted", "documents after clean", "near duplicates", "documents after dedup", "dedup dataset"):
        assert label in out, out
    pages = int(next(line for line in out.splitlines() if "pages crawled" in line).split("│")[2])
    assert pages == 40
    assert (tmp_path / "data" / "dedup").is_dir()
    for label in ("tokenizer vocabulary", "validation bits per byte", "Hugging Face model"):
        assert label in out, out
    run_dir = next((tmp_path / "data" / "pretrain").glob("*[0-9a-f]"))
    assert (run_dir / "hf" / "config.json").exists() and (run_dir / "loss.png").exists()
    for label in ("fine-tuning", "c-api, guide, library, whatsnew", "LM bits per byte", "xz -9 given the training text",
                  "classifier accuracy (test)", "majority-class accuracy", "lm-eval llmill_cloze accuracy", "report"):
        assert label in out, out
    report = next((tmp_path / "data" / "evaluate").glob("*[0-9a-f]"))
    assert {"eval.json", "report.md", "model_card.md", "data_card.md", "loss_curves.png"} <= {p.name for p in report.iterdir()}
    assert "report.md" in out


def test_serve_without_a_server_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path)
    for command in ("serve", "deploy"):
        proc = subprocess.run([sys.executable, "-m", "flows.cli", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "need a Prefect server" in proc.stdout and "PREFECT_API_URL" in proc.stdout, proc.stdout + proc.stderr
