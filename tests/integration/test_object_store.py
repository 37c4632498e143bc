"""Datasets on an object store (a real S3 API: moto's server on 127.0.0.1): files under an
attempt prefix, the manifest created last and create-only. Two racing writers commit exactly
one dataset; a writer killed mid-upload leaves none, and the rerun completes it; `llmill gc`
finds the attempts no manifest names. Each writer is its own process with its own node-local
cache, as two machines would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

WRITER = """
import json, os, sys, time
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from pydantic import BaseModel
from formats import store
from formats.manifest import load_manifest
from tasks.stage import run_stage

class Cfg(BaseModel):
    rows: int = 100

def make(inputs, cfg, out, progress):
    for i in range(3):
        pq.write_table(pa.table({"writer": [os.environ["WRITER"]] * cfg.rows}), out / f"part-{i}.parquet")
    barrier = Path(os.environ["BARRIER"])  # every writer has found no dataset and written its files
    (barrier / os.environ["WRITER"]).touch()
    deadline = time.monotonic() + 60
    while len(list(barrier.iterdir())) < int(os.environ["WRITERS"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"rows": 3 * cfg.rows}

if os.environ.get("KILL_AFTER_UPLOADS"):  # the process dies after that many uploads, before the manifest
    upload, done = store.upload, []
    def upload_then_die(local, url):
        upload(local, url)
        done.append(url)
        if len(done) >= int(os.environ["KILL_AFTER_UPLOADS"]):
            os._exit(9)
    store.upload = upload_then_die

out = run_stage("demo", 1, make, {}, Cfg(), sys.argv[1])
local = store.local_copy(out)
writers = {w for i in range(3) for w in pq.read_table(local / f"part-{i}.parquet")["writer"].to_pylist()}
print("RESULT " + json.dumps({"out": str(out), "run_id": load_manifest(out).run_id, "writers": sorted(writers)}))
"""


def writer(name: str, root: str, tmp: Path, s3_env: dict, writers: int = 1, **extra: str) -> subprocess.Popen:
    (tmp / "barrier").mkdir(exist_ok=True)
    env = {**os.environ, **s3_env, "WRITER": name, "WRITERS": str(writers), "BARRIER": str(tmp / "barrier"),
           "LLMILL_CACHE_DIR": str(tmp / f"cache-{name}"), **extra}
    return subprocess.Popen([sys.executable, "-c", WRITER, root], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):])


def llmill_gc(root: str, s3_env: dict, *args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "gc", root, *args], cwd=ROOT, env={**os.environ, **s3_env, "COLUMNS": "300"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout.splitlines()[:-1]


@pytest.fixture
def bucket(s3_server, request) -> str:
    """A new bucket with versioning on: every write of an object is kept and can be counted."""
    name = "llmill-" + request.node.name.replace("_", "-")[:40].strip("-")
    s3_server.make_bucket(name)
    s3_server.client().put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def writes_of(s3_server, bucket: str, key: str) -> int:
    versions = s3_server.client().list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
    return sum(v["Key"] == key for v in versions)


def test_two_writers_racing_commit_exactly_one_dataset(tmp_path, s3_server, bucket):
    root = f"s3://{bucket}/data"
    first, second = (writer(n, root, tmp_path, s3_server.env, writers=2) for n in ("first", "second"))
    a, b = result(first), result(second)
    fs = s3_server.filesystem()
    (place,) = fs.ls(f"{bucket}/data/demo")
    objects = fs.ls(place, detail=False)
    assert [o for o in objects if o.endswith("/manifest.json")] == [f"{place}/manifest.json"]
    assert writes_of(s3_server, bucket, place.removeprefix(f"{bucket}/") + "/manifest.json") == 1  # created once, never overwritten
    attempts = sorted(o.rsplit("/", 1)[-1] for o in objects if "/attempt-" in o)
    assert len(attempts) == 2  # both uploaded their files; one manifest names one attempt
    # the loser reads the winner's dataset: the same run, the winner's files only
    assert a["out"] == b["out"] and a["run_id"] == b["run_id"] and a["writers"] == b["writers"] and len(a["writers"]) == 1
    winner = json.loads(fs.cat_file(f"{place}/manifest.json"))
    assert winner["prefix"] == f"attempt-{a['run_id']}" and len(winner["files"]) == 3
    loser = next(x for x in attempts if x != winner["prefix"])

    assert llmill_gc(root, s3_server.env) == [f"{a['out']}/{loser}"]
    llmill_gc(root, s3_server.env, "--delete")
    # read by object, not by prefix: moto still lists a versioned bucket's deleted prefix
    left = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    key = place.removeprefix(f"{bucket}/")
    assert sorted(left) == sorted([f"{key}/manifest.json"] + [f"{key}/{winner['prefix']}/{f['path']}" for f in winner["files"]])


def test_a_writer_killed_mid_upload_leaves_no_dataset_and_the_rerun_completes_it(tmp_path, s3_server, bucket, monkeypatch):
    from formats.manifest import is_dataset

    root = f"s3://{bucket}/data"
    killed = writer("killed", root, tmp_path, s3_server.env, KILL_AFTER_UPLOADS="2")
    killed.communicate(timeout=120)
    assert killed.returncode == 9
    fs = s3_server.filesystem()
    (place,) = fs.ls(f"{bucket}/data/demo")
    (attempt,) = fs.ls(place, detail=False)
    assert "/attempt-" in attempt and len(fs.find(attempt)) == 2  # two of three files, no manifest
    url = f"s3://{place}"
    for key, value in s3_server.env.items():  # this process reads the bucket too
        monkeypatch.setenv(key, value)
    assert not is_dataset(url)
    assert llmill_gc(root, s3_server.env) == [f"s3://{attempt}"]

    done = result(writer("rerun", root, tmp_path, s3_server.env))
    assert done["out"] == url and is_dataset(url) and done["writers"] == ["rerun"]
    assert llmill_gc(root, s3_server.env) == [f"s3://{attempt}"]  # still the killed one's, and only it


def file_entries(dataset: str) -> list[tuple]:
    from formats.manifest import load_manifest

    return [(f.path, f.bytes, f.rows, f.sha256) for f in load_manifest(dataset).files]


@pytest.mark.prefect_server
@pytest.mark.trainer
def test_the_data_and_pretrain_flows_on_s3_equal_the_local_run_and_rerun_cached(tmp_path, s3_server, bucket, monkeypatch, prefect_harness):
    from flows.data_flow import data_flow
    from flows.llmill_config import LlmillConfig
    from flows.pretrain_flow import pretrain_flow
    from tests.helpers import all_task_states, python_doc_site_pages, tiny_pipeline_config, write_warc

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LLMILL_CACHE_DIR", str(tmp_path / "node-cache"))
    warc = write_warc(tmp_path / "small.warc.gz", python_doc_site_pages(2))
    tree = tiny_pipeline_config(tmp_path / "local", warc)
    tree["pretrain"]["train"] |= {"steps": 6, "eval_every": 3, "checkpoint_every": 3}
    local, remote = (LlmillConfig.model_validate({**tree, "root": root}) for root in (str(tmp_path / "local"), f"s3://{bucket}/data"))

    results = {}
    for name, config in (("local", local), ("s3", remote)):
        data = data_flow(config)
        results[name] = {"ingest": data["raw"][0], "extract": data["docs"], "clean": data["clean"], "dedup": data["dedup"],
                         **{k: v for k, v in pretrain_flow(config, data["dedup"]).items() if k in ("tokenizer", "shards", "run")}}
    assert all(str(p).startswith(f"s3://{bucket}/data/") for p in results["s3"].values()), results["s3"]
    assert not (tmp_path / "local" / "s3:").exists()
    for stage in ("ingest", "extract", "clean", "dedup", "tokenizer", "shards"):  # the same files, rows and hashes
        assert file_entries(results["s3"][stage]) == file_entries(results["local"][stage]), stage
    # the run's checkpoints and exports are on the bucket, under the manifest's attempt prefix
    fs = s3_server.filesystem()
    run = results["s3"]["run"].removeprefix("s3://")
    prefix = json.loads(fs.cat_file(f"{run}/manifest.json"))["prefix"]
    on_bucket = {p.removeprefix(f"{run}/{prefix}/") for p in fs.find(f"{run}/{prefix}")}
    assert {"final/model.safetensors", "hf/config.json"} <= on_bucket
    assert {e[0] for e in file_entries(results["s3"]["run"])} == {e[0] for e in file_entries(results["local"]["run"])} == on_bucket

    # a rerun on S3 (another node: an empty local cache) is answered from cache, stage by stage
    monkeypatch.setenv("LLMILL_CACHE_DIR", str(tmp_path / "other-node-cache"))
    again = data_flow(remote, return_state=True)
    states = all_task_states(again.state_details.flow_run_id, {"ingest", "extract", "clean", "dedup"})
    assert again.result()["dedup"] == results["s3"]["dedup"]
    assert {"ingest", "extract", "clean", "dedup"} <= states.keys() and set(states.values()) == {"Cached"}, states
    shards = pretrain_flow(remote, results["s3"]["dedup"], return_state=True)
    states = all_task_states(shards.state_details.flow_run_id, {"train_tokenizer", "tokenize", "pretrain"})
    assert {"train_tokenizer", "tokenize", "pretrain"} <= states.keys() and set(states.values()) == {"Cached"}, states


@pytest.mark.trainer
def test_a_training_killed_on_one_node_resumes_from_the_root_on_another(tmp_path, s3_server, bucket, monkeypatch, library_corpus):
    import threading
    import time

    from formats.manifest import load_manifest
    from model.config import ModelShape, TrainConfig
    from tasks.pretrain import VERSION, PretrainConfig, pretrain
    from tasks.stage import run_stage, stage_dir
    from tests.helpers import metrics, training_pids

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    _, tok, shards = library_corpus
    train = TrainConfig(steps=12, micro_batch_size=8, seq_len=64, lr=3e-3, warmup_steps=2, eval_every=12, eval_windows=4,
                        checkpoint_every=4, log_every=1, trackers=[], threads_per_process=1)
    cfg = PretrainConfig(model=ModelShape(preset="test-tiny"), train=train, export_hf=False)
    root = f"s3://{bucket}/data"
    place = stage_dir(root, "pretrain", VERSION, cfg, {"shards": shards, "tokenizer": tok})
    fs = s3_server.filesystem()
    remote_state = f"{place.removeprefix('s3://')}/resume/checkpoints/step-000004/trainer_state.json"

    def kill_when_step_4_is_on_the_store(cache: Path, killed: list):
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not fs.exists(remote_state):
            fs.invalidate_cache()
            time.sleep(0.05)
        spec = next((cache / "partial").glob("*.partial")) / "run.json"
        for pid in training_pids(spec):
            os.kill(pid, 9)
            killed.append(pid)

    monkeypatch.setenv("LLMILL_CACHE_DIR", str(tmp_path / "node-a"))
    killed: list[int] = []
    watcher = threading.Thread(target=kill_when_step_4_is_on_the_store, args=(tmp_path / "node-a", killed), daemon=True)
    watcher.start()
    with pytest.raises(Exception):
        run_stage("pretrain", VERSION, pretrain, {"shards": shards, "tokenizer": tok}, cfg, root, resumable=True)
    watcher.join(timeout=10)
    assert killed, "the training was never killed"

    monkeypatch.setenv("LLMILL_CACHE_DIR", str(tmp_path / "node-b"))  # another node: nothing of node a's disk
    run = run_stage("pretrain", VERSION, pretrain, {"shards": shards, "tokenizer": tok}, cfg, root, resumable=True)
    stats = load_manifest(run).stats
    assert stats["resumed_at_step"] in (4, 8) and stats["steps"] == 12, stats
    steps = [m["step"] for m in metrics(tmp_path / "node-b" / "datasets" / place_key_dir(run)) if "loss" in m]
    assert steps == list(range(1, 13))  # node a's lines from before its checkpoint, then node b's
    key = place.removeprefix(f"s3://{bucket}/")
    left = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]]
    assert left and not [k for k in left if k.startswith(f"{key}/resume/")]  # committed: the run's progress is removed


def place_key_dir(url: str) -> str:
    from formats.manifest import load_manifest
    from formats.store import place_key

    return f"{place_key(url)}/{load_manifest(url).digest[:16]}"



@pytest.mark.dask_cluster
def test_dask_workers_that_share_no_disk_with_the_flow_read_and_write_the_bucket(tmp_path, s3_server, bucket, monkeypatch):
    """extract, clean and dedup with `root: s3://…` on Dask workers that cannot see the flow's
    node cache (a tmpfs over it in their mount namespace): the workers fetch their inputs into a
    cache of their own and upload their parts; the datasets equal the local pool's on local disk.
    An extract stopped after two shards resumes on the same attempt prefix."""
    from flows.llmill_config import load_config
    from formats.manifest import load_manifest
    from tasks.clean import VERSION as CLEAN_VERSION
    from tasks.clean import clean
    from tasks.dedup import VERSION as DEDUP_VERSION
    from tasks.dedup import DedupConfig, dedup
    from tasks.executor import ExecutorConfig, executor_scope
    from tasks.extract import VERSION as EXTRACT_VERSION
    from tasks.extract import ExtractConfig, extract
    from tasks.ingest import VERSION as INGEST_VERSION
    from tasks.ingest import IngestConfig, ingest
    from tasks.stage import run_stage
    from tests.helpers import DaskCluster, python_doc_site_pages, write_warc

    class Stopped(Exception):
        pass

    shard_bytes = 30_000
    pages = python_doc_site_pages(4)
    warc = write_warc(tmp_path / "docs.warc.gz", pages + [(f"{url}?copy", body, kind) for url, body, kind in pages[::5]])  # duplicates
    clean_cfg = load_config().clean
    fs = s3_server.filesystem()
    fs.put_file(str(warc), f"{bucket}/cc/docs.warc.gz")

    def data_stages(executor: ExecutorConfig, root: str, source: str, stop_extract_after: int | None = None) -> dict:
        def stop(done, total):
            if stop_extract_after is not None and done >= stop_extract_after:
                raise Stopped

        with executor_scope(executor):
            raw = run_stage("ingest", INGEST_VERSION, ingest, {}, IngestConfig(paths=[source]), root)
            layout = {"shard_bytes": shard_bytes}
            if stop_extract_after is not None:
                with pytest.raises(Stopped):
                    run_stage("extract", EXTRACT_VERSION, extract, {"raw": [raw]}, ExtractConfig(workers=1), root, stop, sharded=True, layout=layout)
            docs = run_stage("extract", EXTRACT_VERSION, extract, {"raw": [raw]}, ExtractConfig(workers=1), root, sharded=True, layout=layout)
            cleaned = run_stage("clean", CLEAN_VERSION, clean, {"documents": str(docs)}, clean_cfg, root, sharded=True)
            deduped = run_stage("dedup", DEDUP_VERSION, dedup, {"documents": str(cleaned)}, DedupConfig(), root, sharded=True)
        return {"extract": str(docs), "clean": str(cleaned), "dedup": str(deduped)}

    monkeypatch.setenv("LLMILL_CACHE_DIR", str(tmp_path / "local-cache"))
    local = data_stages(ExecutorConfig(shard_bytes=shard_bytes), str(tmp_path / "local"), str(warc))

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    flow_cache, worker_cache = tmp_path / "flow-node", tmp_path / "worker-node"
    flow_cache.mkdir()
    monkeypatch.setenv("LLMILL_CACHE_DIR", str(worker_cache))  # what the workers start with
    with DaskCluster(tmp_path / "dask", workers=2, hide=flow_cache) as cluster:
        monkeypatch.setenv("LLMILL_CACHE_DIR", str(flow_cache))
        executor = ExecutorConfig(kind="dask", address=cluster.address, shard_bytes=shard_bytes, retries=1)
        remote = data_stages(executor, f"s3://{bucket}/data", f"s3://{bucket}/cc/docs.warc.gz", stop_extract_after=2)

    assert all(v.startswith(f"s3://{bucket}/data/") for v in remote.values()), remote
    for stage in ("extract", "clean", "dedup"):  # the same files, rows and hashes
        assert file_entries(remote[stage]) == file_entries(local[stage]), stage
    stats = {stage: load_manifest(remote[stage]).stats for stage in remote}
    assert stats["extract"]["shards"] >= 6 and 0 < stats["extract"]["shards_processed"] < stats["extract"]["shards"], stats["extract"]
    assert stats["dedup"]["near_duplicates"] + stats["dedup"]["exact_duplicates"] > 0, stats["dedup"]
    for stage in ("extract", "clean", "dedup"):
        assert {k: v for k, v in stats[stage].items() if k not in ("seconds", "shards_processed", "index")} == \
            {k: v for k, v in load_manifest(local[stage]).stats.items() if k not in ("seconds", "shards_processed", "index")}, stage
    # the workers fetched the inputs of clean and dedup themselves, into their own node cache
    from formats import store

    fetched = {p.name for p in (worker_cache / "datasets").iterdir()}
    assert {store.place_key(remote["extract"]), store.place_key(remote["clean"])} <= fetched, fetched
    assert not list((worker_cache / "shards").iterdir())  # each shard's scratch directory is gone
    # the data parts were never on the flow's node: nothing of them was kept in its cache as a copy
    assert not (flow_cache / "datasets" / store.place_key(remote["dedup"])).exists()
    # only the manifest's files under the attempt prefix: the working files (signatures, buckets) are removed
    for stage, url in remote.items():
        manifest = load_manifest(url)
        base = url.removeprefix("s3://")
        fs.invalidate_cache()
        assert {p.removeprefix(f"{base}/{manifest.prefix}/") for p in fs.find(f"{base}/{manifest.prefix}")} == \
            {f.path for f in manifest.files}, stage


def test_the_dedup_index_on_the_store_is_a_log_that_racing_appends_both_land_in(tmp_path, s3_server, bucket, monkeypatch):
    """Four nodes append a segment each at once: four entries at four sequence numbers; a
    segment appended again keeps its place; a node's mirror reads what the log says."""
    import threading

    import pyarrow as pa

    from formats.index_segments import index_segments, live_index, write_index_segment
    from tasks import remote_index

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    url = f"s3://{bucket}/data/index/minhash-test"
    nodes = [tmp_path / f"node-{n}" for n in range(4)]
    for n, node in enumerate(nodes):
        write_index_segment(node, f"batch-{n}", [f"doc-{n}"], [f"hash-{n}"], None)
    barrier = threading.Barrier(len(nodes))
    seqs: dict[int, int] = {}

    def append(n: int) -> None:
        barrier.wait()
        seqs[n] = remote_index.push(url, nodes[n], f"batch-{n}")

    threads = [threading.Thread(target=append, args=(n,)) for n in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seqs.values()) == [0, 1, 2, 3], seqs

    # batch-1 written again with other rows: same place, the new rows
    write_index_segment(nodes[1], "batch-1", ["doc-1", "doc-1b"], ["hash-1", "hash-1b"], None)
    assert remote_index.push(url, nodes[1], "batch-1") == 4
    assert remote_index.push(url, nodes[1], "batch-1") == 4  # a rerun of the same append adds nothing
    mirror = tmp_path / "reader"
    rows = remote_index.pull(url, mirror)
    assert [(s["name"], s["seq"]) for s in rows] == sorted(((f"batch-{n}", seqs[n]) for n in range(4)), key=lambda x: x[1])
    assert [s["name"] for s in index_segments(mirror)] == [s["name"] for s in rows]
    live = live_index(mirror, "none", pa.array([], pa.string()), 8)
    assert sorted(live["id"].to_pylist()) == ["doc-0", "doc-1", "doc-1b", "doc-2", "doc-3"]
