"""Reading WARC files in place: extract over ranged HTTP reads against a local copy.

    .venv/bin/python bench/ingest.py [--pages N] [--rounds R]

Input: the HTML pages of Debian's python3.11-doc in one WARC file. Each round runs ingest ->
extract on a fresh root twice, in alternating order: from the local file, and from the same file
served with byte ranges and ETags on 127.0.0.1 (tests/helpers.py's range server, one thread per
request). The server is on this machine, so the figure is the cost of the ranged-read path
(fsspec's HTTP filesystem, request overhead, the split-point scan over HTTP), not of a network.
Writes bench/results-ingest.json.
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
from tests.helpers import range_server, write_warc  # noqa: E402


def run(root: Path, paths: list[str], shard_bytes: int, workers: int) -> dict:
    from formats.manifest import load_manifest
    from tasks.executor import ExecutorConfig, executor_scope
    from tasks.extract import VERSION as EV
    from tasks.extract import ExtractConfig, extract
    from tasks.ingest import VERSION as IV
    from tasks.ingest import IngestConfig, ingest
    from tasks.stage import run_stage

    start = time.perf_counter()
    raw = run_stage("ingest", IV, ingest, {}, IngestConfig(paths=paths, allow_private_addresses=True), root)
    with executor_scope(ExecutorConfig(shard_bytes=shard_bytes)):
        docs = run_stage("extract", EV, extract, {"raw": [str(raw)]}, ExtractConfig(workers=workers), root, sharded=True,
                         layout={"shard_bytes": shard_bytes})
    return {"seconds": time.perf_counter() - start, "documents": load_manifest(docs).stats["documents"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=0, help="0: every page")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shard-bytes", type=int, default=470_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmill-ingest-"))
    served = work / "served"
    served.mkdir()
    warc = write_warc(served / "pydocs.warc.gz", pages(args.pages or None))
    results: dict = {"warc_bytes": warc.stat().st_size, "shard_bytes": args.shard_bytes, "workers": args.workers, "runs": []}
    with range_server(served) as (base, log):
        sources = {"local": [str(warc)], "http": [f"{base}/pydocs.warc.gz"]}
        run(work / "warm", sources["local"], args.shard_bytes, args.workers)  # shard processes and imports
        for r in range(args.rounds):
            for kind in (("local", "http") if r % 2 == 0 else ("http", "local")):
                import tasks.ingest

                tasks.ingest._described.clear()
                root = work / f"r{r}-{kind}"
                before = len(log)
                res = {"round": r, "source": kind, **run(root, sources[kind], args.shard_bytes, args.workers)}
                if kind == "http":
                    mine = log[before:]
                    res["requests"] = len(mine)
                    res["bytes_served"] = sum(n for *_, n in mine)
                results["runs"].append(res)
                print(json.dumps(res), flush=True)
                shutil.rmtree(root, ignore_errors=True)
    seconds = {k: sorted(x["seconds"] for x in results["runs"] if x["source"] == k) for k in ("local", "http")}
    median = {k: v[len(v) // 2] for k, v in seconds.items()}
    results["median_s"] = median
    results["http_vs_local_time"] = median["http"] / median["local"]
    (HERE / "results-ingest.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
