"""Scale benchmark: the data stages on the local pool and on Dask, per core, at 1 and 2 workers.

    .venv/bin/python bench/scale.py [--pages N] [--rounds R] [--shard-bytes B] [--pin]

Input: the HTML pages of Debian's python3.11-doc in one WARC file, cut into shards of
`--shard-bytes`. Each round runs extract -> clean -> dedup on a fresh root with every engine
(local pool, Dask with an external scheduler and warm workers) at 1 and 2 workers, in
alternating order; with --pin, a run's processes (the bench, its shard processes, the
cluster's scheduler and workers) are held to as many cores as it has workers. Each run also
records the machine's busy cores while it ran. Also: the engine's cost per shard (a trivial shard function), the
cold start of a Dask worker, and the resolve step's peak memory at 1x and 10x the corpus.
Writes bench/results-scale.json; the figures go into bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench.data import pages  # noqa: E402
from tasks.executor import ExecutorConfig, executor_scope, map_shards  # noqa: E402
from tests.helpers import DaskCluster, write_warc  # noqa: E402


def data_stages(root: Path, warc: Path, executor: ExecutorConfig, workers: int) -> tuple[float, int, dict]:
    from flows.llmill_config import load_config
    from formats.manifest import load_manifest
    from tasks.clean import VERSION as CV
    from tasks.clean import clean
    from tasks.dedup import VERSION as DV
    from tasks.dedup import DedupConfig, dedup
    from tasks.extract import VERSION as EV
    from tasks.extract import ExtractConfig, extract
    from tasks.ingest import VERSION as IV
    from tasks.ingest import IngestConfig, ingest
    from tasks.stage import run_stage

    raw = run_stage("ingest", IV, ingest, {}, IngestConfig(paths=[str(warc)]), root)
    clean_cfg = load_config().clean.model_copy(update={"workers": workers})
    stages: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        stages[name] = time.perf_counter() - start
        return result

    with executor_scope(executor):
        docs = timed("extract", lambda: run_stage("extract", EV, extract, {"raw": [str(raw)]}, ExtractConfig(workers=workers), root, sharded=True,
                                                  layout={"shard_bytes": executor.shard_bytes}))
        cleaned = timed("clean", lambda: run_stage("clean", CV, clean, {"documents": str(docs)}, clean_cfg, root, sharded=True))
        timed("dedup", lambda: run_stage("dedup", DV, dedup, {"documents": str(cleaned)}, DedupConfig(workers=workers), root, sharded=True))
    return sum(stages.values()), load_manifest(docs).stats["documents"], stages


def tree(pids: list[int]):
    """The processes of these trees (a cluster's scheduler and workers, the bench and its
    forkserver and shard processes) as they are now."""
    import psutil

    procs = []
    for pid in pids:
        try:
            top = psutil.Process(pid)
            procs += [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return procs


@contextlib.contextmanager
def on_cores(pids: list[int], cores: set[int] | None):
    """Pin every process of these trees to `cores` for the run (None: leave them be), so that
    N workers get N cores and no spare one absorbs the driver's or the scheduler's work."""
    import psutil

    if cores is None:
        yield
        return
    everything = sorted(os.sched_getaffinity(0))
    for proc in tree(pids):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.cpu_affinity(sorted(cores))
    try:
        yield
    finally:  # shard processes started during the run are let go too
        for proc in tree(pids):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.cpu_affinity(everything)


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (every process, this bench's and others')."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def per_shard_cost(executor: ExecutorConfig, n: int, tmp: Path) -> float:
    with executor_scope(executor):
        map_shards(abs, [("warm", 0)], tmp / "warm", [], workers=2)  # a shard function that does nothing
        start = time.perf_counter()
        map_shards(abs, [(f"s{i}", i) for i in range(n)], tmp / "cost", [], workers=2)
    return (time.perf_counter() - start) / n


RESOLVE_CHILD = """
import json, re, sys, tracemalloc
import pyarrow as pa, pyarrow.parquet as pq
from tasks.dedup import DedupConfig, resolve_from_files
signed, index_part, buckets = json.loads(sys.argv[1])
pq.read_table(buckets[0]); pq.read_table(index_part, columns=["id", "signature"]).take(pa.array([], pa.int64()))  # lazy imports, before measuring
hwm = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
open("/proc/self/clear_refs", "w").write("5")  # resets the peak RSS to the current RSS
before = hwm()
tracemalloc.start()
dups = resolve_from_files(signed, index_part, buckets, DedupConfig())
traced = tracemalloc.get_traced_memory()[1]
print(json.dumps({"duplicates": len(dups), "traced_peak_bytes": traced, "rss_before_kib": before, "rss_peak_kib": hwm()}))
"""


def pydoc_signatures(limit: int | None):
    """Signatures and exact hashes of the pydoc pages' extracted text (the demo corpus)."""
    import numpy as np

    from bench.data import pages as all_pages
    from tasks.dedup import DedupConfig, Signer
    from tasks.extract import ExtractConfig, extract_text
    from tasks.text_hash import exact_hash

    cfg = DedupConfig()
    texts = []
    for url, body, _ in all_pages(limit):
        try:
            texts.append(extract_text(body.decode("utf-8", "replace"), url, ExtractConfig())[1])
        except Exception:  # noqa: BLE001 - a page the extractor refuses is left out of this measure
            pass
    signer = Signer(cfg.shingle_words, cfg.num_perm, cfg.seed)
    return np.stack([signer.signature(t) for t in texts]), [exact_hash(t) for t in texts]


def resolve_peak(work: Path, copies: int, planted: bool, corpus) -> dict:
    """The resolve step (tasks.dedup.resolve_from_files) in a fresh process, on the pydoc
    corpus `copies` times over: each copy beyond the first is either distinct documents
    (random signatures: the corpus grows, the candidates do not) or, `planted`, near copies
    of the first (a few signature values changed: the candidates grow with it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.dedup import EXACT, SIGNED_SCHEMA, DedupConfig, band_buckets

    cfg = DedupConfig()
    base, base_hashes = corpus
    rng = np.random.default_rng(0)
    d = work / f"resolve-{copies}-{planted}"
    d.mkdir(parents=True)
    signed = []
    for c in range(copies):
        if c == 0:
            sigs, hashes = base, base_hashes
        elif planted:
            sigs = base.copy()
            cols = rng.integers(0, cfg.num_perm, size=(len(base), 8))  # 8 of 112 values differ: Jaccard ~0.93
            np.put_along_axis(sigs, cols, rng.integers(0, 2**32, size=cols.shape, dtype=np.uint32), axis=1)
            hashes = [f"{c:08x}{i:024x}" for i in range(len(base))]
        else:
            sigs = rng.integers(0, 2**32, size=base.shape, dtype=np.uint32)
            hashes = [f"{c:08x}{i:024x}" for i in range(len(base))]
        path = d / f"part-{c:05d}.parquet"
        sig_col = pa.ListArray.from_arrays(pa.array(np.arange(0, sigs.size + 1, cfg.num_perm, dtype=np.int32)), pa.array(sigs.ravel()))
        pq.write_table(pa.table({"id": [f"{c:04d}-{i:06d}" for i in range(len(sigs))], "hash": hashes, "signature": sig_col},
                                schema=SIGNED_SCHEMA), path)
        signed.append(str(path))
    index_part = str(d / "index.parquet")
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "hash": pa.array([], pa.string()),
                             "signature": pa.array([], pa.list_(pa.uint32()))}), index_part)
    buckets = []
    for b in [EXACT, *range(cfg.bands)]:
        buckets.append(str(d / ("exact.parquet" if b == EXACT else f"band-{b:03d}.parquet")))
        band_buckets((signed, index_part, b, cfg, buckets[-1], ""))
    members = sum(len(m) for path in buckets for m in pq.read_table(path).column("members").to_pylist())
    r = subprocess.run([sys.executable, "-c", RESOLVE_CHILD, json.dumps([signed, index_part, buckets])], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"resolve step failed: {r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {"documents": copies * len(base), "planted": planted, "bucket_memberships": members, **out,
            "rss_growth_kib": out["rss_peak_kib"] - out["rss_before_kib"]}


def resolve_all(work: Path, limit: int | None) -> dict:
    corpus = pydoc_signatures(limit)
    return {"1x": resolve_peak(work, 1, False, corpus), "10x distinct": resolve_peak(work, 10, False, corpus),
            "10x planted near copies": resolve_peak(work, 10, True, corpus)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=0, help="0: every page")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shard-bytes", type=int, default=1_000_000)
    ap.add_argument("--pin", action="store_true", help="N workers on N cores: each run's processes pinned to its workers' cores")
    ap.add_argument("--only-resolve", action="store_true", help="only the resolve step's memory, merged into the results file")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmill-scale-"))
    if args.only_resolve:
        out = HERE / "results-scale.json"
        results = json.loads(out.read_text()) if out.exists() else {}
        results["resolve"] = resolve_all(work, args.pages or None)
        out.write_text(json.dumps(results, indent=2))
        print(json.dumps(results["resolve"], indent=2))
        shutil.rmtree(work, ignore_errors=True)
        return
    warc = write_warc(work / "pydocs.warc.gz", pages(args.pages or None))
    results: dict = {"warc_bytes": warc.stat().st_size, "runs": []}
    cold = time.perf_counter()
    with DaskCluster(work / "dask1", workers=1) as one, DaskCluster(work / "dask2", workers=2) as two:
        results["cluster_start_s"] = time.perf_counter() - cold
        engines = [("local", 1, ExecutorConfig(shard_bytes=args.shard_bytes)),
                   ("local", 2, ExecutorConfig(shard_bytes=args.shard_bytes)),
                   ("dask", 1, ExecutorConfig(kind="dask", address=one.address, shard_bytes=args.shard_bytes)),
                   ("dask", 2, ExecutorConfig(kind="dask", address=two.address, shard_bytes=args.shard_bytes))]
        for i, (_, workers, executor) in enumerate(engines):  # warm children and workers: imports and forkservers
            data_stages(work / f"warm{i}", warc, executor, workers)
        results["pinned"] = args.pin
        for r in range(args.rounds):
            for kind, workers, executor in (engines if r % 2 == 0 else engines[::-1]):
                root = work / f"r{r}-{kind}{workers}"
                cores = set(sorted(os.sched_getaffinity(0))[:workers]) if args.pin else None
                busy = busy_seconds()
                with on_cores([os.getpid()], cores):  # the bench's tree: its shard processes and both clusters
                    seconds, docs, stages = data_stages(root, warc, executor, workers)
                cores_busy = (busy_seconds() - busy) / seconds  # the machine's, idle processes of the other engines included
                results["runs"].append({"round": r, "engine": kind, "workers": workers, "seconds": seconds, "documents": docs,
                                        "docs_per_s_per_core": docs / seconds / workers, "stages_s": stages,
                                        "cores_busy": cores_busy, "docs_per_busy_core_s": docs / seconds / cores_busy})
                print(json.dumps(results["runs"][-1]), flush=True)
                shutil.rmtree(root, ignore_errors=True)
        results["per_shard_s"] = {"local": per_shard_cost(ExecutorConfig(), 200, work / "l"),
                                  "dask": per_shard_cost(ExecutorConfig(kind="dask", address=two.address), 200, work / "d")}
    start = time.perf_counter()
    with DaskCluster(work / "cold", workers=1):
        results["worker_cold_start_s"] = time.perf_counter() - start
    results["resolve"] = resolve_all(work, args.pages or None)
    best = {}
    for run in results["runs"]:
        key = f"{run['engine']}-{run['workers']}"
        best[key] = max(best.get(key, 0), run["docs_per_s_per_core"])
    results["best_docs_per_s_per_core"] = best
    (HERE / "results-scale.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
