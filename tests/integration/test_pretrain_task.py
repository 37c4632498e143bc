"""The pretrain stage under Prefect: a training process killed mid-run fails the task, and the
task's retry resumes from the last checkpoint instead of starting over. Also exercises the
TensorBoard tracker and torch.compile paths of the trainer."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from prefect import flow
from safetensors.torch import load_file

from formats.manifest import load_manifest
from model.config import ModelShape, TrainConfig
from model.launch import run_training
from tasks.pretrain import VERSION, PretrainConfig, pretrain_task
from tasks.stage import stage_dir
from tests.helpers import losses, max_diff, metrics, run_spec, training_pids

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def data(library_corpus):
    _, tok, shards = library_corpus
    return tok, shards



def kill_after_checkpoint(partial: Path, step: int, killed: list[int]) -> threading.Thread:
    def watch():
        marker = partial / "checkpoints" / f"step-{step:06d}" / "trainer_state.json"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not marker.exists():
            time.sleep(0.02)
        for pid in training_pids(partial / "run.json"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.prefect_server
def test_task_retry_resumes_from_the_last_checkpoint(prefect_harness, data, single_run, tmp_path):
    tok, shards = data
    train = dict(steps=40, micro_batch_size=8, seq_len=64, lr=3e-3, warmup_steps=5, eval_every=20, eval_windows=16,
                 checkpoint_every=20, log_every=1, trackers=["tensorboard"], threads_per_process=1)
    cfg = PretrainConfig(model=ModelShape(preset="test-tiny"), train=TrainConfig(**train), export_hf=False)
    root = str(tmp_path / "root")
    inputs = {"shards": shards, "tokenizer": tok}
    partial = Path(str(stage_dir(root, "pretrain", VERSION, cfg, inputs)) + ".partial")

    @flow
    def pretrain_only() -> str:
        return pretrain_task(inputs, cfg, root)

    killed: list[int] = []
    watcher = kill_after_checkpoint(partial, 20, killed)
    run = Path(pretrain_only())
    watcher.join(timeout=5)
    assert killed, "the training process was never killed"

    stats = load_manifest(run).stats
    assert stats["resumed_at_step"] == 20 and stats["steps"] == 40
    steps = [m["step"] for m in metrics(run) if "loss" in m]
    assert steps == list(range(1, 41))  # the first attempt's lines past step 20 were dropped
    assert list(run.rglob("events.out.tfevents*")), "no TensorBoard event file"

    # the resumed run ends where an uninterrupted run of the same steps ends (the shared single run:
    # these settings are run_spec's defaults; trackers change nothing in training)
    straight = single_run
    assert max_diff(load_file(str(straight / "final" / "model.safetensors")), load_file(str(run / "final" / "model.safetensors"))) <= 1e-6


def test_compiled_training_tracks_eager(data, single_run, tmp_path):
    compiled = tmp_path / "compiled"
    # compiled blocks under gradient checkpointing: the recomputed forward runs the compiled block again
    run_training(run_spec(data, compiled, steps=6, eval_every=6, checkpoint_every=6, compile=True, gradient_checkpointing=True))
    # eager: the shared uninterrupted run's first 6 steps (the same settings; the learning rate is
    # still warming up over them, so its longer schedule changes none of their losses)
    le, lc = {k: v for k, v in losses(single_run).items() if k <= 6}, losses(compiled)
    assert le.keys() == lc.keys()
    assert max(abs(le[k] - lc[k]) for k in le) < 1e-3, (le, lc)
    # one graph for both blocks (compiled one by one); the evaluation ran eagerly, not recompiled for no_grad
    assert json.loads((compiled / "summary.json").read_text())["compiled_graphs"] == 1
