"""Scale benchmark: the data stages on the local pool and on Dask, per core, at 1 and 2 workers.

    .venv/bin/python bench/scale.py [--pages N] [--rounds R]

Input: the HTML pages of Debian's python3.11-doc in one WARC file, cut into shards of
`--shard-bytes`. Each round runs extract -> clean -> dedup on a fresh root with every engine
(local pool, Dask with an external scheduler and warm workers) at 1 and 2 workers, in
alternating order. Also: the engine's cost per shard (a trivial shard function), the
cold start of a Dask worker, and the resolve step's peak memory at 1x and 10x the corpus.
Writes bench/results-scale.json; the figures go into bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench.data import pages  # noqa: E402
from tasks.executor import ExecutorConfig, executor_scope, map_shards  # noqa: E402
from tests.helpers import DaskCluster, write_warc  # noqa: E402


def data_stages(root: Path, warc: Path, executor: ExecutorConfig, workers: int) -> tuple[float, int]:
    from flows.config import load_config
    from tasks.clean import VERSION as CV, clean
    from tasks.dedup import VERSION as DV, DedupConfig, dedup
    from tasks.extract import VERSION as EV, ExtractConfig, extract
    from tasks.ingest import VERSION as IV, IngestConfig, ingest
    from tasks.stage import load_manifest, run_stage

    raw = run_stage("ingest", IV, ingest, [], IngestConfig(paths=[str(warc)]), root)
    clean_cfg = load_config().clean.model_copy(update={"workers": workers})
    start = time.perf_counter()
    with executor_scope(executor):
        docs = run_stage("extract", EV, extract, [str(raw)], ExtractConfig(workers=workers), root, sharded=True,
                         layout={"shard_bytes": executor.shard_bytes})
        cleaned = run_stage("clean", CV, clean, [str(docs)], clean_cfg, root, sharded=True)
        run_stage("dedup", DV, dedup, [str(cleaned)], DedupConfig(workers=workers), root, sharded=True)
    return time.perf_counter() - start, load_manifest(docs).stats["documents"]


def per_shard_cost(executor: ExecutorConfig, n: int, tmp: Path) -> float:
    with executor_scope(executor):
        map_shards(abs, [("warm", 0)], tmp / "warm", [], workers=2)  # a shard function that does nothing
        start = time.perf_counter()
        map_shards(abs, [(f"s{i}", i) for i in range(n)], tmp / "cost", [], workers=2)
    return (time.perf_counter() - start) / n


def resolve_peak(copies: int, limit: int | None) -> dict:
    """Peak traced memory of resolve() on the pydoc corpus's signatures, `copies` times over
    with fresh random signatures for each copy beyond the first (distinct documents)."""
    import numpy as np

    from tasks.dedup import DedupConfig, Signer, buckets_of, exact_buckets, exact_hash, resolve
    from bench.data import pages as all_pages
    from tasks.extract import ExtractConfig, extract_text

    cfg = DedupConfig()
    texts = []
    for url, body, _ in all_pages(limit):
        try:
            texts.append(extract_text(body.decode("utf-8", "replace"), url, ExtractConfig())[1])
        except Exception:  # noqa: BLE001 - a page the extractor refuses is left out of this measure
            pass
    signer = Signer(cfg.shingle_words, cfg.num_perm, cfg.seed)
    base = np.stack([signer.signature(t) for t in texts])
    rng = np.random.default_rng(0)
    sigs = np.concatenate([base] + [rng.integers(0, 2**32, size=base.shape, dtype=np.uint32) for _ in range(copies - 1)])
    ids = [f"{i:09d}" for i in range(len(sigs))]
    hashes = [exact_hash(t) for t in texts] + [f"{i:032x}" for i in range(len(sigs) - len(texts))]
    near = [b for band in range(cfg.bands) for b in buckets_of(sigs[:, band * cfg.rows:(band + 1) * cfg.rows], len(sigs))]
    exact = exact_buckets(hashes, [])
    tracemalloc.start()
    dups = resolve(ids, exact, near, lambda p: sigs[p], [], cfg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"documents": len(sigs), "bucket_members": sum(len(b) for b in near), "duplicates": len(dups), "peak_bytes": peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=0, help="0: every page")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shard-bytes", type=int, default=1_000_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmill-scale-"))
    warc = write_warc(work / "pydocs.warc.gz", pages(args.pages or None))
    results: dict = {"warc_bytes": warc.stat().st_size, "runs": []}
    cold = time.perf_counter()
    with DaskCluster(work / "dask1", workers=1) as one, DaskCluster(work / "dask2", workers=2) as two:
        results["cluster_start_s"] = time.perf_counter() - cold
        engines = [("local", 1, ExecutorConfig(shard_bytes=args.shard_bytes)), ("local", 2, ExecutorConfig(shard_bytes=args.shard_bytes)),
                   ("dask", 1, ExecutorConfig(kind="dask", address=one.address, shard_bytes=args.shard_bytes)),
                   ("dask", 2, ExecutorConfig(kind="dask", address=two.address, shard_bytes=args.shard_bytes))]
        for i, (_, workers, executor) in enumerate(engines):  # warm children and workers: imports and forkservers
            data_stages(work / f"warm{i}", warc, executor, workers)
        for r in range(args.rounds):
            for kind, workers, executor in (engines if r % 2 == 0 else engines[::-1]):
                root = work / f"r{r}-{kind}{workers}"
                seconds, docs = data_stages(root, warc, executor, workers)
                results["runs"].append({"round": r, "engine": kind, "workers": workers, "seconds": seconds, "documents": docs,
                                        "docs_per_s_per_core": docs / seconds / workers})
                print(json.dumps(results["runs"][-1]), flush=True)
                shutil.rmtree(root, ignore_errors=True)
        results["per_shard_s"] = {"local": per_shard_cost(ExecutorConfig(), 200, work / "l"),
                                  "dask": per_shard_cost(ExecutorConfig(kind="dask", address=two.address), 200, work / "d")}
    start = time.perf_counter()
    with DaskCluster(work / "cold", workers=1):
        results["worker_cold_start_s"] = time.perf_counter() - start
    results["resolve"] = {"1x": resolve_peak(1, args.pages or None), "10x": resolve_peak(10, args.pages or None)}
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
