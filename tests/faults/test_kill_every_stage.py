"""SIGKILL of the whole `llmill run` process group inside each stage in turn (crawl, extract,
dedup, tokenize, pretrain, finetune), at a moment drawn from a seed, then a rerun each time:
the last run completes; what a killed run had finished is reused (its manifests' run ids never
change afterwards, the sharded stage keeps its finished shards, the crawl and the training
resume); and the data it produced equals an uninterrupted run's: the same pages, documents
(fetch times and WARC names aside), the tokenizer byte for byte and every document's tokens.
The group is frozen (SIGSTOP) before it is killed, so the test sees the stage still running at
that moment rather than guessing it from timing. The runs share one Prefect server and the
machine's local results storage, as runs on one machine do."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from formats.manifest import load_manifest
from tasks.verify import dataset_places
from tests.helpers import stored

ROOT = Path(__file__).resolve().parents[2]
SEED = 15

SMALL = ["crawl.max_pages=24", "tokenizer.vocab_size=512",
         "pretrain.model.preset=test-tiny", "pretrain.train.steps=20", "pretrain.train.eval_every=10", "pretrain.train.checkpoint_every=10",
         "pretrain.train.micro_batch_size=4", "pretrain.train.compile=false", "pretrain.export_hf=false", "tokenize.val_fraction=0.2", "finetune.train.steps=20",
         "finetune.train.eval_every=10", "finetune.train.checkpoint_every=10", "evaluate.lm_eval.enabled=false",
         "evaluate.generation.max_new_tokens=4", "executor.shard_bytes=20000"]


def partial(root: Path, stage: str) -> Path | None:
    return next((root / stage).glob("*.partial"), None) if (root / stage).is_dir() else None


def under_way(root: Path, stage: str) -> bool:
    """The stage has started and has something to lose: stored pages, a finished shard, a checkpoint."""
    p = partial(root, stage)
    if p is None:
        return False
    if stage == "crawl":
        return any(f.stat().st_size > 0 for f in p.glob("warc/*.warc.gz"))
    if stage == "extract":
        return any(p.glob(".shards/*.json"))
    if stage in ("pretrain", "finetune"):
        return any(p.glob("checkpoints/step-*/trainer_state.json"))
    return True


DELAY_S = {"crawl": 0.3, "extract": 0.05, "dedup": 0.02, "tokenize": 0.0, "pretrain": 0.2, "finetune": 0.2}  # the most drawn


def committed(root: Path) -> dict[str, str]:
    """{stage: run id} of every committed dataset under root (`llmill verify`'s reading: a .partial
    directory may already hold its manifest, written before the rename that commits it)."""
    return {Path(place).parent.name: load_manifest(place).run_id for place in dataset_places(str(root))}


def llmill_run(root: Path, server_env: dict, log: Path, command: str = "run") -> subprocess.Popen:
    """`llmill run` (or another flow's command); builtin:pydoc on whatever port is free: its
    pages' URLs never show it."""
    env = {**server_env, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "flows.cli", command, "--set", f"root={root}"]
    for assignment in SMALL + [f"finetune.examples.path={root.parent / 'sections.csv'}"]:
        cmd += ["--set", assignment]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, process_group=0)


def stored_pages(root: Path) -> dict[str, bytes]:
    (place,) = root.glob("crawl/*[0-9a-f]")
    return {url: record["body"] for url, record in stored(place).items()}


def documents(root: Path, stage: str) -> list[dict]:
    (place,) = root.glob(f"{stage}/*[0-9a-f]")
    rows = pq.read_table(place / "docs").to_pylist()
    return sorted(({k: v for k, v in r.items() if k not in ("fetched_at", "warc_record_id", "warc_file")} for r in rows),
                  key=lambda r: r["id"])


def tokens_by_document(root: Path) -> dict[tuple[str, str], bytes]:
    """{(split, doc id): its tokens}: the shards' contents whatever their file layout (the
    killed crawl resumed into a second WARC file, so extract planned its shards differently)."""
    import pyarrow as pa

    (place,) = root.glob("tokenize/*[0-9a-f]")
    found = {}
    for docs_file in sorted(place.glob("*/part-*.docs.arrow")):
        tokens = pa.ipc.open_file(docs_file.with_name(docs_file.name.replace(".docs", ""))).read_all().column("tokens").to_numpy()
        for d in pa.ipc.open_file(docs_file).read_all().to_pylist():
            found[(docs_file.parent.name, d["doc_id"])] = tokens[d["start"] : d["start"] + d["length"] + 1].tobytes()
    return found


def file_bytes(root: Path, stage: str) -> dict[str, bytes]:
    (place,) = root.glob(f"{stage}/*[0-9a-f]")
    return {f.path: (place / f.path).read_bytes() for f in load_manifest(place).files}


@pytest.mark.prefect_server
@pytest.mark.trainer
def test_a_run_killed_inside_each_stage_in_turn_completes_reusing_what_it_finished(tmp_path, prefect_api):
    # the session's Prefect server for the eight runs (each embedded server would start again with
    # every run); the task cache is the runs' shared local results storage, as for runs on one
    # machine: under a Prefect home of this test's own
    server, _ = prefect_api
    killed_and_rerun(tmp_path, {**os.environ, **server, "PREFECT_HOME": str(tmp_path / "prefect")})


def killed_and_rerun(tmp_path: Path, env: dict) -> None:
    from tests.corpus import section_examples, write_examples_csv

    rng = random.Random(SEED)
    killed, reference = tmp_path / "killed" / "data", tmp_path / "reference" / "data"
    for root in (killed, reference):
        root.parent.mkdir()
        write_examples_csv(root.parent / "sections.csv", section_examples(per_class=20))

    kept: dict[str, str] = {}  # stage -> run id, of datasets some earlier run finished
    for n, stage in enumerate(("crawl", "extract", "dedup", "tokenize", "pretrain", "finetune")):
        proc = llmill_run(killed, env, tmp_path / f"run-{n}.log")
        try:
            deadline = time.monotonic() + 300
            while not under_way(killed, stage):
                assert proc.poll() is None, f"run {n} ended before {stage} was under way:\n" + (tmp_path / f"run-{n}.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"{stage} never got under way"
                time.sleep(0.005)
            time.sleep(rng.uniform(0, DELAY_S[stage]))
            os.killpg(proc.pid, signal.SIGSTOP)
            assert stage not in committed(killed), f"{stage} finished before the kill landed"  # killed inside it
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        now = committed(killed)
        assert {s: now[s] for s in kept} == kept  # nothing an earlier run finished was computed again
        kept = now
    final = llmill_run(killed, env, tmp_path / "final.log")
    assert final.wait(timeout=600) == 0, (tmp_path / "final.log").read_text()[-4000:]
    done = committed(killed)
    assert {s: done[s] for s in kept} == kept
    assert {"crawl", "extract", "clean", "dedup", "train_tokenizer", "tokenize", "pretrain", "examples", "finetune", "evaluate"} <= set(done)

    # the killed stages resumed from what they had
    stats = {s: load_manifest(next(killed.glob(f"{s}/*[0-9a-f]"))).stats for s in ("crawl", "extract", "pretrain")}
    assert stats["crawl"]["resumed"] is True
    assert 0 < stats["extract"]["shards_processed"] < stats["extract"]["shards"]
    assert stats["pretrain"]["resumed_at_step"] >= 10

    # the same data as a run that nobody killed: the pretrain flow, which runs the data flow and
    # tokenizes (what is compared below), stopped once its tokens are committed: its training, like
    # fine-tuning and evaluation, would add nothing to compare
    uninterrupted = llmill_run(reference, env, tmp_path / "reference.log", "pretrain")
    try:
        deadline = time.monotonic() + 600
        while "tokenize" not in committed(reference) and uninterrupted.poll() is None:
            assert time.monotonic() < deadline, "the reference run never committed its tokens"
            time.sleep(0.05)
        assert "tokenize" in committed(reference) or uninterrupted.wait() == 0, (tmp_path / "reference.log").read_text()[-4000:]
    finally:
        if uninterrupted.poll() is None:
            os.killpg(uninterrupted.pid, signal.SIGKILL)
        uninterrupted.wait()
    assert {"crawl", "extract", "clean", "dedup", "train_tokenizer", "tokenize"} <= set(committed(reference))
    assert stored_pages(killed) == stored_pages(reference)
    for stage in ("extract", "clean", "dedup"):
        assert documents(killed, stage) == documents(reference, stage), stage
    assert file_bytes(killed, "train_tokenizer") == file_bytes(reference, "train_tokenizer")
    assert tokens_by_document(killed) == tokens_by_document(reference)
