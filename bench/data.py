"""Data-flow benchmark: documents per second per core, against peers measured in the same run.

    make bench            # or: .venv/bin/python bench/data.py [--pages N]

Input: every HTML page of Debian's python3.11-doc, as WARC shards. Peers: trafilatura.extract
in a plain loop; datasketch MinHash updated one shingle at a time (and its update_batch, and
rensa where installed in the bench venv); datatrove's WarcReader -> Trafilatura ->
GopherQualityFilter in `.bench-venv` (datatrove is not a project dependency).
Writes bench/RESULTS.md's data section and bench/results-data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from tests.helpers import PYDOCS, write_warc  # noqa: E402

WORK = HERE / ".work"
BENCH_PY = ROOT / ".bench-venv" / "bin" / "python"


def pages(limit: int | None) -> list[tuple[str, bytes, str]]:
    files = sorted(p for p in PYDOCS.rglob("*.html") if "_static" not in p.parts)
    files = files[:limit] if limit else files
    return [(f"https://docs.python.org/3.11/{f.relative_to(PYDOCS)}", f.read_bytes(), "text/html; charset=utf-8") for f in files]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def shard_warcs(items, shards: int) -> Path:
    d = WORK / "warc"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for i in range(shards):
        write_warc(d / f"pydocs-{i:02d}.warc.gz", items[i::shards])
    return d


def plain_trafilatura(items) -> float:
    import trafilatura

    def loop():
        for url, body, _ in items:
            trafilatura.extract(body.decode("utf-8"), url=url, include_comments=False, include_tables=True)

    return timed(loop)[0]


def minhash_peers(texts: list[str]) -> dict:
    from datasketch import MinHash

    from tasks.dedup import Signer

    def shingles(t: str) -> list[bytes]:
        w = re.findall(r"\w+", t.lower())
        return [" ".join(w[i : i + 5]).encode() for i in range(max(1, len(w) - 4))]

    signer = Signer(5, 112, 1)
    ours, _ = timed(lambda: [signer.signature(t) for t in texts])

    def one_at_a_time():
        for t in texts:
            m = MinHash(num_perm=112, seed=1)
            for s in shingles(t):
                m.update(s)

    one, _ = timed(one_at_a_time)
    batch, _ = timed(lambda: [MinHash(num_perm=112, seed=1).update_batch(shingles(t)) for t in texts])
    out = {"ours_s": ours, "datasketch_one_at_a_time_s": one, "datasketch_update_batch_s": batch}
    if BENCH_PY.exists():
        probe = subprocess.run([str(BENCH_PY), "-c", "import rensa"], capture_output=True)
        if probe.returncode == 0:
            src = WORK / "texts.json"
            src.write_text(json.dumps(texts))
            code = (
                "import json,re,sys,time; from rensa import RMinHash; t=json.load(open(sys.argv[1])); s=time.perf_counter()\n"
                "for x in t:\n w=re.findall(r'\\w+',x.lower()); RMinHash(num_perm=112, seed=1).update([' '.join(w[i:i+5]) for i in range(max(1,len(w)-4))])\n"
                "print(time.perf_counter()-s)"
            )
            r = subprocess.run([str(BENCH_PY), "-c", code, str(src)], capture_output=True, text=True)
            if r.returncode == 0:
                out["rensa_s"] = float(r.stdout.strip().splitlines()[-1])
    return out


def stage_runs(warc_dir: Path, workers: int) -> dict:
    from flows.llmill_config import load_config
    from formats.manifest import load_manifest
    from tasks.clean import clean
    from tasks.dedup import DedupConfig, dedup
    from tasks.extract import ExtractConfig, extract
    from tasks.ingest import IngestConfig, ingest
    from tasks.stage import run_stage

    root = WORK / f"stages-w{workers}"
    shutil.rmtree(root, ignore_errors=True)
    raw = run_stage("ingest", 1, ingest, {}, IngestConfig(paths=[str(warc_dir / "*.warc.gz")]), root)
    t_ext, docs = timed(lambda: run_stage("extract", 1, extract, {"raw": [str(raw)]}, ExtractConfig(workers=workers), root))
    clean_cfg = load_config().clean.model_copy(update={"workers": workers})
    t_clean, cleaned = timed(lambda: run_stage("clean", 1, clean, {"documents": str(docs)}, clean_cfg, root))
    t_dedup, deduped = timed(lambda: run_stage("dedup", 1, dedup, {"documents": str(cleaned)}, DedupConfig(workers=workers), root))
    return {
        "extract_s": t_ext,
        "clean_s": t_clean,
        "dedup_s": t_dedup,
        "documents": load_manifest(docs).stats["documents"],
        "clean_in": load_manifest(cleaned).stats["documents_in"],
        "dedup_in": load_manifest(deduped).stats["documents_in"],
        "docs_path": str(docs),
    }


def flow_runs(warc_dir: Path, workers: int, extra: tuple[str, ...] = (), tag: str = "") -> dict:
    """The whole data flow under Prefect (server already started), cold and then cached."""
    from flows.data_flow import data_flow
    from flows.llmill_config import load_config

    root = WORK / f"flow-w{workers}{tag}"
    shutil.rmtree(root, ignore_errors=True)
    cfg = load_config(
        None,
        [
            f"root={root}",
            "crawl.seeds=[]",
            f"ingest.paths=[{warc_dir}/*.warc.gz]",
            f"extract.workers={workers}",
            f"clean.workers={workers}",
            f"dedup.workers={workers}",
            *extra,
        ],
    )
    cold, _ = timed(lambda: data_flow(cfg))
    cached, _ = timed(lambda: data_flow(cfg))
    return {"cold_s": cold, "cached_s": cached}


DATATROVE_PIPELINE = """
import sys, time
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import WarcReader
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import GopherQualityFilter
from datatrove.pipeline.writers import JsonlWriter
warc_dir, out = sys.argv[1], sys.argv[2]
ex = LocalPipelineExecutor(pipeline=[WarcReader(warc_dir, glob_pattern="*.warc.gz"), Trafilatura(favour_precision=False, timeout=30.0),
     GopherQualityFilter(), JsonlWriter(out + "/out")], tasks=1, workers=1, logging_dir=out + "/logs")
s = time.perf_counter(); ex.run(); print("SECONDS", time.perf_counter() - s)
"""


def one_core(cpu: int = 0):
    """A preexec_fn that pins a peer's process tree to one CPU: both peers get the same core."""
    return lambda: os.sched_setaffinity(0, {cpu})


def datatrove_run(warc_dir: Path, out: Path) -> dict:
    """datatrove's WarcReader -> Trafilatura -> GopherQualityFilter -> JsonlWriter, one task, one core."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    r = subprocess.run([str(BENCH_PY), "-c", DATATROVE_PIPELINE, str(warc_dir), str(out)], capture_output=True, text=True,
                       preexec_fn=one_core())
    wall = time.perf_counter() - start
    m = re.search(r"SECONDS ([\d.]+)", r.stdout)
    if r.returncode or not m:
        raise RuntimeError(f"datatrove peer failed: {r.stderr[-2000:]}")
    timeouts = r.stderr.count("Timeout while cleaning record text")
    if timeouts:  # its extraction helper died (lxml_html_clean missing): no figure rather than a false one
        raise RuntimeError(f"datatrove's Trafilatura step timed out on {timeouts} records: {r.stderr[-1500:]}")
    kept = sum(1 for f in (out / "out").rglob("*.jsonl*") for _ in _jsonl_lines(f))
    return {"wall_s": wall, "pipeline_s": float(m.group(1)), "documents_kept": kept}


def _jsonl_lines(path: Path):
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        yield from f


def llmill_run(warc_dir: Path, root: Path, prefect_home: Path, extra: tuple[str, ...] = ()) -> dict:
    """`llmill data` as a user runs it (embedded Prefect on SQLite, its start-up included), one worker, one core."""
    shutil.rmtree(root, ignore_errors=True)
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": "", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [str(ROOT / ".venv" / "bin" / "llmill"), "data", str(ROOT / "configs" / "demo.yaml"),
           "--set", f"root={root}", "--set", "crawl.seeds=[]", "--set", f"ingest.paths=[{warc_dir}/*.warc.gz]",
           *[a for kv in ("extract.workers=1", "clean.workers=1", "dedup.workers=1", *extra) for a in ("--set", kv)]]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=one_core())
    wall = time.perf_counter() - start
    if r.returncode:
        raise RuntimeError(f"llmill data failed: {r.stdout[-1000:]} {r.stderr[-2000:]}")
    from formats.manifest import load_manifest

    dedup_manifest = max((root / "dedup").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    return {"wall_s": wall, "documents_kept": load_manifest(dedup_manifest.parent).stats["documents_out"]}


def against_datatrove(warc_dir: Path, rounds: int) -> dict | None:
    """Wall time of whole runs, alternating llmill and datatrove, after one warm-up run of each
    (file cache, the Prefect database's migrations, compiled regexes on disk)."""
    if not BENCH_PY.exists():
        return None
    home = WORK / "prefect-home"
    runs: dict[str, list] = {"llmill": [], "datatrove": []}
    llmill_run(warc_dir, WORK / "vs-llmill", home)
    datatrove_run(warc_dir, WORK / "vs-datatrove")
    for r in range(rounds):
        order = ("llmill", "datatrove") if r % 2 == 0 else ("datatrove", "llmill")
        for peer in order:
            run = llmill_run(warc_dir, WORK / "vs-llmill", home) if peer == "llmill" else datatrove_run(warc_dir, WORK / "vs-datatrove")
            runs[peer].append(run)
            print(f"round {r} {peer}: {run}", flush=True)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    llmill_s = med([x["wall_s"] for x in runs["llmill"]])
    datatrove_s = med([x["wall_s"] for x in runs["datatrove"]])
    return {"rounds": runs, "llmill_wall_s": llmill_s, "datatrove_wall_s": datatrove_s, "llmill_vs_datatrove_wall": datatrove_s / llmill_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=None, help="limit the number of pages")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds against datatrove")
    ap.add_argument("--only-datatrove", action="store_true", help="only the wall-time comparison with datatrove")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    items = pages(args.pages)
    n = len(items)
    warc_dir = shard_warcs(items, 8)
    print(f"{n} pages of python3.11-doc, {sum(len(b) for _, b, _ in items) / 1e6:.1f} MB of HTML, 8 WARC shards")
    if args.only_datatrove:  # refresh only this comparison in the results file
        dt = against_datatrove(warc_dir, args.rounds)
        out = HERE / "results-data.json"
        res = json.loads(out.read_text()) if out.exists() else {}
        res.update({"against_datatrove": dt, "llmill_vs_datatrove_wall": dt and dt["llmill_vs_datatrove_wall"]})
        out.write_text(json.dumps(res, indent=2, default=str))
        print(json.dumps({k: v for k, v in (dt or {}).items() if k != "rounds"}, indent=2))
        return

    from bench.pii import main as pii_bench

    pii = {k: v for k, v in pii_bench().items() if k not in ("missed", "wrong")}  # the clean stage's redaction on planted sets
    t_plain = plain_trafilatura(items)
    print(f"plain trafilatura loop: {t_plain:.1f}s")
    s1 = stage_runs(warc_dir, 1)
    print(f"stages, 1 worker: {s1}")
    s2 = stage_runs(warc_dir, 2)
    print(f"stages, 2 workers: {s2}")

    import pyarrow.parquet as pq

    texts = pq.read_table(Path(s1["docs_path"]) / "docs").column("text").to_pylist()
    mh = minhash_peers(texts)
    print(f"minhash: {mh}")

    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        f1 = flow_runs(warc_dir, 1)
        f2 = flow_runs(warc_dir, 2)
        f1_full = flow_runs(warc_dir, 1, ("extract.fast=false",), "-fallbacks")
    print(f"flow, 1 worker: {f1}; 2 workers: {f2}; 1 worker with trafilatura's fallbacks: {f1_full}")
    dt = against_datatrove(warc_dir, args.rounds)
    print(f"against datatrove: {dt and {k: v for k, v in dt.items() if k != 'rounds'}}")

    rate = lambda docs, s, cores=1: docs / s / cores  # noqa: E731
    res = {
        "pages": n,
        "plain_trafilatura_docs_per_s": rate(n, t_plain),
        "extract_docs_per_s_per_core": {"1": rate(n, s1["extract_s"]), "2": rate(n, s2["extract_s"], 2)},
        "clean_docs_per_s_per_core": {"1": rate(s1["clean_in"], s1["clean_s"]), "2": rate(s2["clean_in"], s2["clean_s"], 2)},
        "dedup_docs_per_s_per_core": {"1": rate(s1["dedup_in"], s1["dedup_s"]), "2": rate(s2["dedup_in"], s2["dedup_s"], 2)},
        "flow_docs_per_s_per_core": {"1": rate(n, f1["cold_s"]), "2": rate(n, f2["cold_s"], 2)},
        "flow_2_vs_1_cores": f1["cold_s"] / f2["cold_s"],
        "cached_rerun_share_of_cold": f1["cached_s"] / f1["cold_s"],
        "minhash_docs_per_s": {k.removesuffix("_s"): len(texts) / v for k, v in mh.items()},
        "minhash_speedup_vs_one_at_a_time": mh["datasketch_one_at_a_time_s"] / mh["ours_s"],
        "datatrove_docs_per_s_per_core": rate(n, dt["datatrove_wall_s"]) if dt else None,
        "pii_planted": pii,
        "raw": {"stages_1": s1, "stages_2": s2, "flow_1": f1, "flow_2": f2, "minhash": mh, "datatrove": dt, "plain_s": t_plain},
    }
    res["flow_vs_plain_trafilatura"] = res["flow_docs_per_s_per_core"]["1"] / res["plain_trafilatura_docs_per_s"]
    res["flow_with_fallbacks_vs_plain_trafilatura"] = rate(n, f1_full["cold_s"]) / res["plain_trafilatura_docs_per_s"]
    res["raw"]["flow_1_fallbacks"] = f1_full
    if dt:
        res["llmill_docs_per_s_per_core_wall"] = rate(n, dt["llmill_wall_s"])
        res["llmill_vs_datatrove_wall"] = dt["llmill_vs_datatrove_wall"]
        res["against_datatrove"] = dt
    (HERE / "results-data.json").write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: v for k, v in res.items() if k != "raw"}, indent=2))


if __name__ == "__main__":
    main()
