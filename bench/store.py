"""The data stages with their datasets on an object store against a local root.

    .venv/bin/python bench/store.py [--pages N] [--rounds R]

Input: the HTML pages of Debian's python3.11-doc in one WARC file. Each round runs ingest ->
extract -> clean -> dedup on the local pool twice, in alternating order: once with a local
root, once with `root: s3://...` on moto's S3 server on 127.0.0.1 (each run with an empty
node-local cache). moto is not S3: it holds objects in the memory of one Python process on
this machine, with no network between, so the ratio is the cost of the object-store path
(uploads, the create-only manifest, local copies of inputs, fsspec overheads), not of S3's
latency or bandwidth. Writes bench/results-store.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench.data import pages  # noqa: E402
from tests.helpers import S3Server, write_warc  # noqa: E402


def run(root: str, warc: Path, shard_bytes: int) -> dict:
    from flows.llmill_config import load_config
    from formats.manifest import load_manifest
    from tasks.clean import VERSION as CV
    from tasks.clean import clean
    from tasks.dedup import VERSION as DV
    from tasks.dedup import dedup
    from tasks.executor import ExecutorConfig, executor_scope
    from tasks.extract import VERSION as EV
    from tasks.extract import extract
    from tasks.ingest import VERSION as IV
    from tasks.ingest import IngestConfig, ingest
    from tasks.orchestration import executor_layout
    from tasks.stage import run_stage

    cfg = load_config()
    executor = ExecutorConfig(shard_bytes=shard_bytes)
    start = time.perf_counter()
    raw = run_stage("ingest", IV, ingest, {}, IngestConfig(paths=[str(warc)]), root)
    with executor_scope(executor):
        docs = run_stage("extract", EV, extract, {"raw": [str(raw)]}, cfg.extract, root, sharded=True, layout=executor_layout("tasks.extract", executor))
        kept = run_stage("clean", CV, clean, {"documents": str(docs)}, cfg.clean, root, sharded=True, layout=executor_layout("tasks.clean", executor))
        final = run_stage("dedup", DV, dedup, {"documents": str(kept)}, cfg.dedup, root, sharded=True, layout=executor_layout("tasks.dedup", executor))
    return {"seconds": time.perf_counter() - start, "documents": load_manifest(final).stats.get("documents_out", load_manifest(final).stats)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=0, help="0: every page")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shard-bytes", type=int, default=470_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmill-store-"))
    warc = write_warc(work / "pydocs.warc.gz", pages(args.pages or None))
    results: dict = {"warc_bytes": warc.stat().st_size, "shard_bytes": args.shard_bytes, "runs": []}
    with S3Server(work / "moto") as s3:
        os.environ.update(s3.env)
        s3.make_bucket("llmill-bench")
        run(str(work / "warm"), warc, args.shard_bytes)  # shard processes and imports
        for r in range(args.rounds):
            for kind in (("local", "s3") if r % 2 == 0 else ("s3", "local")):
                os.environ["LLMILL_CACHE_DIR"] = str(work / f"cache-{r}-{kind}")
                root = f"s3://llmill-bench/r{r}" if kind == "s3" else str(work / f"r{r}")
                res = {"round": r, "root": kind, **run(root, warc, args.shard_bytes)}
                results["runs"].append(res)
                print(json.dumps(res), flush=True)
    seconds = {k: sorted(x["seconds"] for x in results["runs"] if x["root"] == k) for k in ("local", "s3")}
    results["median_s"] = {k: v[len(v) // 2] for k, v in seconds.items()}
    results["s3_vs_local_time"] = results["median_s"]["s3"] / results["median_s"]["local"]
    (HERE / "results-store.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
