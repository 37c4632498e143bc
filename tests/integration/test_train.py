"""The trainer for real: loss goes down, exact resume after SIGKILL, DDP and FSDP on 2 CPU
processes (gloo), refusal of a launch that would train independently, HF export parity."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from formats.manifest import load_manifest
from formats.token_shards import open_tokens
from model.launch import TrainingFailed, free_port, launch_command, run_training
from model.llama import ModelConfig
from tests.helpers import losses, max_diff, metrics, run_spec, weights

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def data(library_corpus):
    _, tok, shards = library_corpus
    return tok, shards


def unigram_entropy(shards: str) -> float:
    tokens = np.concatenate([open_tokens(f) for f in sorted((Path(shards) / "train").glob("part-*[0-9].arrow"))])
    p = np.bincount(tokens.astype(np.int64)) / len(tokens)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_loss_goes_below_unigram_entropy_and_exports_to_hf(data, pretrained_lm, tmp_path):
    out = Path(pretrained_lm)  # the suite's one 300-step pretraining (conftest.PRETRAIN_STEPS), shared with the fine-tuning tests
    summary = load_manifest(out).stats
    assert summary["steps"] == 300
    from model.llama import Llama

    assert summary["params"] == Llama(run_spec(data, out).model).num_params()  # the trainer's count, reported by the stage
    h = unigram_entropy(data[1])
    assert summary["val_loss"] < 0.85 * h, (summary["val_loss"], h)
    assert summary["val_bpb"] > 0 and math.isclose(summary["val_ppl"], math.exp(summary["val_loss"]), rel_tol=1e-6)
    first = metrics(out)[0]
    assert first["loss"] > summary["val_loss"] + 0.5
    assert {"lr", "grad_norm", "tokens_per_s"} <= first.keys()

    # the exported model, loaded by transformers with no custom code, gives our logits
    import sentencepiece as spm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model.export import export_hf, logits_ours

    hf_dir = export_hf(out / "final" / "model.safetensors", run_spec(data, out).model, Path(data[0]) / "tokenizer.model", tmp_path / "hf")
    assert (hf_dir / "model.safetensors").exists() and (hf_dir / "tokenizer.json").exists()
    assert json.loads((hf_dir / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    sp = spm.SentencePieceProcessor(model_file=str(Path(data[0]) / "tokenizer.model"))
    text = "The json module can serialize Python objects.\nUse json.dumps(obj) to get a string."
    ids = tok(text)["input_ids"]
    assert ids == [2] + sp.encode(text)
    x = torch.tensor([ids])
    with torch.no_grad():
        diff = (hf(x).logits - logits_ours(out / "final" / "model.safetensors", run_spec(data, out).model, x)).abs().max()
    assert float(diff) <= 1e-4, float(diff)
    generated = hf.generate(x, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == x.shape[1] + 8


def test_exact_resume_after_sigkill(data, single_run, tmp_path):
    # own run: the killed one, at the shared straight run's settings (run_spec's defaults), the kill aside
    straight = single_run
    killed = tmp_path / "killed"
    s = run_spec(data, killed)
    killed.mkdir()
    (killed / "run.json").write_text(s.model_dump_json())
    cmd, env = launch_command(killed / "run.json", s)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "step-000020" / "trainer_state.json").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    with open(killed / "metrics.jsonl", "a") as f:
        f.write('{"step": 21, "lo')  # a kill mid-line (before: every resume refused, failing on this line)
    run_training(s)
    assert max_diff(weights(straight), weights(killed)) <= 1e-6
    assert losses(straight)[40] == pytest.approx(losses(killed)[40], abs=1e-6)
    assert [m["step"] for m in metrics(killed)] == [m["step"] for m in metrics(straight)]  # the torn line cut, none lost


@pytest.fixture(scope="module")
def ddp_run(data, tmp_path_factory) -> tuple[Path, list[dict]]:
    """One 2-process DDP run (40 steps, 4 windows per process, each rank's weight digests logged)
    and its events: the DDP test reads it, the two-machine and FSDP tests compare against it.
    Tests copy it before writing to it."""
    events = []
    out = tmp_path_factory.mktemp("ddp-run") / "ddp"
    s = run_spec(data, out, distributed="ddp", num_processes=2, micro_batch_size=4)
    run_training(s.model_copy(update={"debug_weight_digests": True}), on_event=events.append)
    return out, events


def test_ddp_two_processes_form_one_group(data, ddp_run, single_run, tmp_path):
    # own run: the 2->1 resume (on a copy of the shared DDP run)
    shared, events = ddp_run
    ddp = tmp_path / "ddp"
    shutil.copytree(shared, ddp)
    start = next(e for e in events if e["event"] == "start")
    assert start["world"] == 2
    ranks = [[json.loads(l) for l in (ddp / f"debug-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 40
    for a, b in zip(*ranks):
        assert a["weights"] == b["weights"]  # identical after every step
        assert a["first_sample"] != b["first_sample"]  # different data
    # equal global batch: one process with 8 windows per step (the shared single run) sees the same samples
    l1, l2 = losses(single_run), losses(ddp)
    assert max(abs(l1[k] - l2[k]) for k in l1) < 2e-3, [(k, l1[k], l2[k]) for k in list(l1)[:5]]

    # a run checkpointed with 2 processes resumes with 1 (same global batch: 4 x 2 accumulation)
    longer = run_spec(data, ddp, steps=60, micro_batch_size=4, grad_accum=2)
    lines = []
    run_training(longer, on_line=lines.append)
    assert any("resumed from" in l and "step 40" in l for l in lines)
    assert max(losses(ddp)) == 60


def test_two_machines_on_127_0_0_1_train_as_one_world(data, ddp_run, tmp_path):
    # own runs: two launchers as two machines (ranks 0 and 1, one process each), against the shared
    # run of one machine with two processes at the same global batch
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    s = run_spec(data, nodes, distributed="ddp", num_processes=2, micro_batch_size=4).model_copy(update={"debug_weight_digests": True})
    (nodes / "run.json").write_text(s.model_dump_json())
    port = str(free_port())
    # each machine's output to a file, not a pipe read one after the other: a machine blocked on a
    # full pipe would stall the other's collectives
    logs = [tmp_path / f"machine-{rank}.log" for rank in (0, 1)]
    machines = [subprocess.Popen([sys.executable, "-m", "model.launch", "--spec", str(nodes / "run.json"), "--num-machines", "2",
                                  "--machine-rank", str(rank), "--main-process-ip", "127.0.0.1", "--main-process-port", port],
                                 cwd=ROOT, stdout=open(logs[rank], "w"), stderr=subprocess.STDOUT, process_group=0) for rank in (0, 1)]
    deadline = time.monotonic() + 300
    try:
        for m in machines:
            m.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        alive = process_tree([m.pid for m in machines])  # which of launcher, torchrun agent and rank hung
        for pid in alive:  # torchrun starts its ranks in sessions of their own: a killpg would miss them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for m in machines:
            m.wait()
        pytest.fail("the two machines never finished; still running:\n" + "\n".join(alive.values()) + "\n" +
                    "\n--- machine 1 ---\n".join(log.read_text()[-4000:] for log in logs))
    outputs = [log.read_text() for log in logs]
    assert [m.returncode for m in machines] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    start = next(json.loads(l) for l in outputs[0].splitlines() if l.startswith('{"event": "start"'))
    assert start["world"] == 2
    ranks = [[json.loads(l) for l in (nodes / f"debug-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 40
    for a, b in zip(*ranks):
        assert a["weights"] == b["weights"]  # identical after every step
        assert a["first_sample"] != b["first_sample"]  # each machine its own data
    one_machine, _ = ddp_run
    l1, l2 = losses(one_machine), losses(nodes)
    assert l1.keys() == l2.keys() and max(abs(l1[k] - l2[k]) for k in l1) < 1e-5


def process_tree(roots: list[int]) -> dict[int, str]:
    """Every process descended from these, whatever its group or session: {pid: 'pid ppid state: command line'}."""
    found = {}
    for root in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            top = psutil.Process(root)
            for proc in [top, *top.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    found[proc.pid] = f"{proc.pid} {proc.ppid()} {proc.status()}: {' '.join(proc.cmdline())[:200]}"
    return found


def test_a_launch_that_gives_the_wrong_world_is_refused(data, tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts ONE process on CPU: asked for 2, the
    trainer refuses instead of silently training alone."""
    s = run_spec(data, tmp_path / "bad", distributed="ddp", num_processes=2, micro_batch_size=4)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text(s.model_dump_json())
    accelerate = str(Path(sys.executable).parent / "accelerate")
    cmd = [accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "model.train", "--spec", str(tmp_path / "bad" / "run.json")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-2000:]
    assert "asked for 2 processes" in output or "would train independently" in output, output[-2000:]
    assert not (tmp_path / "bad" / "final").exists()


def test_fsdp_shards_parameters_and_tracks_ddp(data, ddp_run, tmp_path):
    # own run: FSDP at the shared DDP run's setting (its weight digests change nothing in training)
    events = []
    fsdp = tmp_path / "fsdp"
    run_training(run_spec(data, fsdp, distributed="fsdp", num_processes=2, micro_batch_size=4), on_event=events.append)
    start = next(e for e in events if e["event"] == "start")
    assert start["world"] == 2 and start["local_param_fraction"] < 0.6
    ddp, _ = ddp_run
    lf, ld = losses(fsdp), losses(ddp)
    assert lf.keys() == ld.keys() and max(abs(lf[k] - ld[k]) for k in ld) < 2e-3
    assert max_diff(weights(fsdp), weights(ddp)) < 1e-3


def test_checkpoint_from_another_model_config_is_refused(data, single_run, tmp_path):
    # a copy of the shared single run, resumed for more steps with another model config
    out = tmp_path / "run"
    shutil.copytree(single_run, out)
    other = run_spec(data, out, steps=60)
    other = other.model_copy(update={"model": ModelConfig(preset="test-tiny", vocab_size=512, d_ff=128)})
    with pytest.raises(TrainingFailed, match="another model config"):
        run_training(other)
