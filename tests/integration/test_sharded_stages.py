"""The data stages on shards: extract resumes shard by shard after a kill, and the data flow
on a real Dask cluster writes the same datasets as on the local pool, also when a worker dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from formats.manifest import load_manifest
from tasks.executor import ExecutorConfig, executor_scope
from tasks.extract import VERSION, ExtractConfig, extract
from tasks.ingest import VERSION as INGEST_VERSION
from tasks.ingest import IngestConfig, ingest
from tasks.stage import run_stage

ROOT = Path(__file__).resolve().parents[2]
SHARD_BYTES = 30_000

# extract in a process of its own, SIGKILLed as soon as `k` shards have finished
KILLED_EXTRACT = """
import os, signal, sys
from tasks.executor import ExecutorConfig, executor_scope
from tasks.extract import VERSION, ExtractConfig, extract
from tasks.stage import run_stage
root, raw, k, shard_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def progress(done, total):
    if done >= k:
        os.kill(os.getpid(), signal.SIGKILL)
with executor_scope(ExecutorConfig(shard_bytes=shard_bytes)):
    run_stage("extract", VERSION, extract, {"raw": [raw]}, ExtractConfig(workers=1), root, progress, sharded=True,
              layout={"shard_bytes": shard_bytes})
"""


def raw_dataset(root: Path, warc: Path) -> str:
    return str(run_stage("ingest", INGEST_VERSION, ingest, {}, IngestConfig(paths=[str(warc)]), root))


def extract_on(executor: ExecutorConfig, root: Path, raw: str, progress=lambda d, t: None) -> Path:
    with executor_scope(executor):
        return run_stage("extract", VERSION, extract, {"raw": [raw]}, ExtractConfig(workers=1), root, progress, sharded=True,
                         layout={"shard_bytes": executor.shard_bytes})


def files_of(dataset) -> list[tuple]:
    return [(f.path, f.bytes, f.rows, f.sha256) for f in load_manifest(dataset).files]


def stats_of(dataset) -> dict:
    return {k: v for k, v in load_manifest(dataset).stats.items() if k != "seconds"}


@pytest.fixture(scope="module")
def small_warc(tmp_path_factory) -> Path:
    from tests.helpers import python_doc_site_pages, write_warc

    return write_warc(tmp_path_factory.mktemp("warc") / "docs.warc.gz", python_doc_site_pages(4))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, small_warc):
    root = tmp_path_factory.mktemp("uninterrupted")
    raw = raw_dataset(root, small_warc)
    return raw, extract_on(ExecutorConfig(shard_bytes=SHARD_BYTES), root, raw)


def test_extract_killed_after_k_shards_reruns_only_the_others(tmp_path, small_warc, uninterrupted):
    whole = load_manifest(uninterrupted[1]).stats
    n, k = whole["shards"], 3
    assert n >= 6 and whole["shards_processed"] == n
    raw = raw_dataset(tmp_path, small_warc)
    proc = subprocess.run([sys.executable, "-c", KILLED_EXTRACT, str(tmp_path), raw, str(k), str(SHARD_BYTES)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = next((tmp_path / "extract").glob("*.partial"))
    assert len(list((partial / ".shards").glob("*.json"))) == k
    resumed = extract_on(ExecutorConfig(shard_bytes=SHARD_BYTES), tmp_path, raw)
    assert load_manifest(resumed).stats["shards_processed"] == n - k
    assert files_of(resumed) == files_of(uninterrupted[1])  # bit-equal, part by part
    assert not (resumed / ".shards").exists() and not partial.exists()


@pytest.mark.dask_cluster
def test_extract_on_dask_with_a_worker_killed_equals_the_local_pool(tmp_path, dask_cluster, uninterrupted):
    raw, local = uninterrupted
    killed = []

    def kill_a_worker_once(done, total):
        if done >= 1 and not killed:
            killed.append(dask_cluster.worker_pids()[0])
            os.kill(killed[0], signal.SIGKILL)

    on_dask = extract_on(ExecutorConfig(kind="dask", address=dask_cluster.address, shard_bytes=SHARD_BYTES), tmp_path, raw,
                         kill_a_worker_once)
    assert killed
    assert files_of(on_dask) == files_of(local)  # nothing lost or duplicated
    assert stats_of(on_dask) == stats_of(local)
    dask_cluster.wait_for_workers(2)  # the nanny restarts the killed worker for the tests after this one


@pytest.mark.prefect_server
@pytest.mark.dask_cluster
def test_the_data_flow_on_dask_writes_what_it_writes_on_the_local_pool(tmp_path, dask_cluster, small_warc, prefect_harness):
    from flows.data_flow import data_flow
    from flows.llmill_config import LlmillConfig, load_config

    demo_clean = load_config().clean.model_dump(mode="json")  # the demo's rules for documentation pages
    results = {}
    for kind in ("local", "dask"):
        executor = {"kind": kind, "address": dask_cluster.address if kind == "dask" else "", "shard_bytes": SHARD_BYTES}
        config = LlmillConfig.model_validate({"root": str(tmp_path / kind), "ingest": {"paths": [str(small_warc)]},
                                              "clean": demo_clean, "executor": executor})
        results[kind] = data_flow(config)
    for stage in ("docs", "clean", "dedup"):
        local, dask = results["local"][stage], results["dask"][stage]
        assert files_of(dask) == files_of(local), stage
        # statistics equal, apart from times and the index's place (a path under each root)
        assert {k: v for k, v in stats_of(dask).items() if k != "index"} == {k: v for k, v in stats_of(local).items() if k != "index"}
    assert load_manifest(results["dask"]["docs"]).stats["shards"] >= 6  # SHARD_BYTES cuts the one WARC file


@pytest.fixture(scope="module")
def demo_site_warc(tmp_path_factory) -> Path:
    """Pages of the demo's own site (builtin:pydoc), fetched from it: the pages of the
    encodings.* codec modules are near copies of one another, as in the demo corpus, among
    distinct modules' pages."""
    import urllib.request

    from tasks.pydoc_site import serve_pydoc
    from tests.helpers import write_warc

    names = ([f"encodings.cp125{i}" for i in range(9)] + [f"encodings.iso8859_{i}" for i in range(1, 11)]
             + ["json", "csv", "heapq", "bisect", "textwrap", "string", "fnmatch", "glob", "shlex", "difflib"])
    with serve_pydoc() as base:
        pages = [(base + n + ".html", urllib.request.urlopen(base + n + ".html").read(), "text/html; charset=utf-8") for n in names]
    return write_warc(tmp_path_factory.mktemp("demo-site") / "pydoc.warc.gz", pages)


@pytest.mark.dask_cluster
def test_distributed_dedup_equals_the_one_process_pass_on_demo_pages_on_both_engines(tmp_path, dask_cluster, demo_site_warc):
    from flows.llmill_config import load_config
    from formats.documents import doc_files
    from tasks.clean import VERSION as CLEAN_VERSION
    from tasks.clean import clean
    from tasks.dedup import VERSION as DEDUP_VERSION
    from tasks.dedup import DedupConfig, dedup
    from tests.helpers import reference_duplicates

    clean_cfg, cfg = load_config().clean, DedupConfig()
    written = {}
    for kind in ("local", "dask"):
        executor = ExecutorConfig(kind=kind, address=dask_cluster.address if kind == "dask" else "", shard_bytes=SHARD_BYTES)
        root = tmp_path / kind
        docs = extract_on(executor, root, raw_dataset(root, demo_site_warc))
        with executor_scope(executor):
            cleaned = run_stage("clean", CLEAN_VERSION, clean, {"documents": str(docs)}, clean_cfg, root, sharded=True)
            out = run_stage("dedup", DEDUP_VERSION, dedup, {"documents": str(cleaned)}, cfg, root, sharded=True)
        assert (out / "duplicates.parquet").read_bytes() == reference_duplicates(out, cfg, doc_files(str(cleaned))), kind
        stats = load_manifest(out).stats
        assert stats["near_duplicates"] >= 15 and stats["shards"] >= 2, stats  # the codec pages' clusters, over several parts
        written[kind] = files_of(out)
    assert written["dask"] == written["local"]


@pytest.mark.dask_cluster
def test_dask_workers_that_do_not_see_the_stage_directory_are_refused_before_any_shard(tmp_path, small_warc):
    from tests.helpers import DaskCluster

    root = tmp_path / "root"
    raw = raw_dataset(root, small_warc)
    # a worker on "another machine": the root is an empty directory in its own mount namespace
    with DaskCluster(tmp_path / "dask", workers=1, hide=root) as blind:
        with pytest.raises(RuntimeError, match="1 of 1 Dask workers .* do not see .*extract"):
            extract_on(ExecutorConfig(kind="dask", address=blind.address, shard_bytes=SHARD_BYTES), root, raw)
    partial = next((root / "extract").glob("*.partial"))
    assert not list(partial.glob("part-*")) and not list((partial / ".shards").glob("*.json"))  # nothing ran
