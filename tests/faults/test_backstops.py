"""Nothing hangs a worker forever: every stage task has a timeout sized from its config, and a
training whose task is interrupted (that timeout, Ctrl-C) stops instead of training on, orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model.config import RunSpec, TrainConfig
from model.llama import ModelConfig
from tasks.crawl import CrawlConfig
from tasks.orchestration import DATA_STAGE_BACKSTOP_S, backstop_seconds
from tasks.pretrain import PretrainConfig
from tasks.recrawl import RecrawlConfig
from tests.helpers import training_pids

ROOT = Path(__file__).resolve().parents[2]


def test_backstops_grow_with_what_the_config_asks_for():
    small, slow = CrawlConfig(max_pages=100), CrawlConfig(max_pages=100, requests_per_second_per_host=0.1)
    assert backstop_seconds("crawl", small) > 100 / 2.0 * 2  # past the slowest polite crawl of one host
    assert backstop_seconds("crawl", slow) > backstop_seconds("crawl", small) + 1000
    assert backstop_seconds("crawl", CrawlConfig(max_pages=10_000)) > 10 * backstop_seconds("crawl", small) * 0.9
    assert backstop_seconds("recrawl", RecrawlConfig(crawl=small, at="2026-01-01T00:00:00")) == backstop_seconds("crawl", small)
    short, long = (PretrainConfig(train=TrainConfig(steps=n)) for n in (100, 10_000))
    assert backstop_seconds("pretrain", long) - backstop_seconds("pretrain", short) >= 9_900 * 60
    assert backstop_seconds("dedup", small) == DATA_STAGE_BACKSTOP_S


INTERRUPTED = """
import signal, sys
from model.config import RunSpec
from model.launch import run_training

def timed_out(*_):  # what Prefect's timeout does to a task in the main thread: SIGALRM, raised as an error
    raise TimeoutError("the task's timeout_seconds passed")

signal.signal(signal.SIGALRM, timed_out)
run_training(RunSpec.model_validate_json(open(sys.argv[1]).read()))
"""


@pytest.mark.trainer
def test_an_interrupted_training_task_stops_its_trainer(tmp_path):
    from bench.gpu_check import write_shards

    shards = write_shards(tmp_path / "shards", 50_000, 5_000, 512)
    spec = RunSpec(model=ModelConfig(preset="test-tiny", vocab_size=512),
                   train=TrainConfig(steps=100_000, micro_batch_size=4, seq_len=64, eval_every=100_000, checkpoint_every=100_000,
                                     log_every=100_000, trackers=[], threads_per_process=1, compile=False),
                   shards=str(shards), tokenizer="", out=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    task = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(spec_file)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run_spec = tmp_path / "run" / "run.json"  # run_training writes it and starts the trainer on it
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "model_config.json").exists():  # the trainer is past its start-up
            assert time.monotonic() < deadline and task.poll() is None
            time.sleep(0.1)
        assert training_pids(run_spec)
        # it prints nothing now (log_every), so nothing breaks on the pipe if its reader is gone
        os.kill(task.pid, signal.SIGALRM)  # the task's process only, as Prefect's timeout interrupts the task
        task.wait(timeout=60)
        deadline = time.monotonic() + 30
        while training_pids(run_spec) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert training_pids(run_spec) == []  # before: the trainer trained on with no one reading it
    finally:
        for pid in training_pids(run_spec):
            os.kill(pid, signal.SIGKILL)
        if task.poll() is None:
            task.kill()
