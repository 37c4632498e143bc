"""ingest reads WARC files where they lie: local files, HTTP URLs read in byte ranges from a
127.0.0.1 server, objects in an S3 bucket (moto's server), and a Common Crawl `warc.paths.gz`
listing; nothing is copied into the root, and a source that changes or vanishes is refused by
name."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from formats.manifest import load_manifest
from tasks.executor import ExecutorConfig, ShardFailed, executor_scope
from tasks.extract import VERSION, ExtractConfig, extract
from tasks.ingest import VERSION as INGEST_VERSION
from tasks.ingest import IngestConfig, ingest, source_urls
from tasks.stage import run_stage
from tests.helpers import python_doc_site_pages, range_server, write_warc

SHARD_BYTES = 30_000
ROOT = Path(__file__).resolve().parents[2]


def ingest_and_extract(root: Path, cfg: IngestConfig) -> tuple[Path, Path]:
    raw = run_stage("ingest", INGEST_VERSION, ingest, {}, cfg, root)
    with executor_scope(ExecutorConfig(shard_bytes=SHARD_BYTES)):
        docs = run_stage("extract", VERSION, extract, {"raw": [str(raw)]}, ExtractConfig(workers=1), root, sharded=True,
                         layout={"shard_bytes": SHARD_BYTES})
    return raw, docs


def documents(dataset: Path) -> list[tuple]:
    rows = [r for f in sorted((dataset / "docs").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return [(r["id"], r["url"], r["text"], r["warc_file"], r["warc_record_id"]) for r in rows]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    docs = tmp_path_factory.mktemp("served")
    (docs / "crawl-data").mkdir()
    pages = python_doc_site_pages(4)
    write_warc(docs / "crawl-data" / "a.warc.gz", pages[: len(pages) // 2])
    write_warc(docs / "crawl-data" / "b.warc.gz", pages[len(pages) // 2:])
    return docs


def test_local_and_http_sources_are_read_in_place_with_the_same_documents(tmp_path, served):
    local_raw, local_docs = ingest_and_extract(tmp_path / "local", IngestConfig(paths=[str(served / "crawl-data" / "*.warc.gz")]))
    assert [f.path for f in load_manifest(local_raw).files] == ["sources.json"]  # no WARC byte copied into the root
    assert load_manifest(local_raw).stats["copied_bytes"] == 0
    assert not list((tmp_path / "local").rglob("*.warc*"))
    size = sum(p.stat().st_size for p in (served / "crawl-data").iterdir())
    assert load_manifest(local_raw).stats["bytes"] == size

    with range_server(served) as (base, log):
        urls = [f"{base}/crawl-data/a.warc.gz", f"{base}/crawl-data/b.warc.gz"]
        http_raw, http_docs = ingest_and_extract(tmp_path / "http", IngestConfig(paths=urls, allow_private_addresses=True))
    sources = load_manifest(http_raw).stats["sources"]
    assert sources == urls
    assert documents(http_docs) == documents(local_docs) and len(documents(local_docs)) > 10
    assert load_manifest(http_docs).stats["shards"] >= 3  # the files were split into byte ranges
    gets = [entry for entry in log if entry[0] == "GET"]
    assert gets and all(wanted for _, _, wanted, _ in gets), gets  # ranged reads only, never the whole file
    assert not list((tmp_path / "http").rglob("*.warc*"))


def test_a_changed_source_is_a_new_dataset_and_an_old_one_refuses_it_by_url(tmp_path, served):
    docs = tmp_path / "docs"
    docs.mkdir()
    pages = python_doc_site_pages(3)
    write_warc(docs / "c.warc.gz", pages)
    with range_server(docs) as (base, _):
        cfg = IngestConfig(paths=[f"{base}/c.warc.gz"], allow_private_addresses=True)
        raw = run_stage("ingest", INGEST_VERSION, ingest, {}, cfg, tmp_path / "root")
        assert run_stage("ingest", INGEST_VERSION, ingest, {}, cfg, tmp_path / "root") == raw  # unchanged: the same dataset

        write_warc(docs / "c.warc.gz", pages[:-2])  # the publisher replaced the file
        import tasks.ingest

        tasks.ingest._described.clear()  # the listing is kept for a minute within a process; a later run stats afresh
        again = run_stage("ingest", INGEST_VERSION, ingest, {}, cfg, tmp_path / "root")
        assert again != raw
        with executor_scope(ExecutorConfig(shard_bytes=SHARD_BYTES, retries=0)), pytest.raises(ShardFailed) as failed:
            run_stage("extract", VERSION, extract, {"raw": [str(raw)]}, ExtractConfig(workers=1), tmp_path / "root", sharded=True,
                      layout={"shard_bytes": SHARD_BYTES})
        assert f"{base}/c.warc.gz" in str(failed.value) and "changed since ingest" in str(failed.value)

        (docs / "c.warc.gz").unlink()  # and then took it down
        with executor_scope(ExecutorConfig(shard_bytes=SHARD_BYTES, retries=1)), pytest.raises(ShardFailed) as gone:
            run_stage("extract", VERSION, extract, {"raw": [str(again)]}, ExtractConfig(workers=1), tmp_path / "root", sharded=True,
                      layout={"shard_bytes": SHARD_BYTES})
        assert f"{base}/c.warc.gz" in str(gone.value) and "after 2 tries" in str(gone.value)


def test_a_common_crawl_listing_gives_a_reproducible_subset(tmp_path, served):
    names = [f"crawl-data/CC-MAIN-2024-10/segments/{i}/warc/CC-MAIN-{i:05d}.warc.gz" for i in range(40)]
    listing = tmp_path / "warc.paths.gz"
    listing.write_bytes(gzip.compress(("\n".join(names) + "\n").encode()))
    base = "https://data.commoncrawl.org/"
    everything = source_urls(IngestConfig(paths=[str(listing)]))
    assert everything == [base + n for n in names]
    assert source_urls(IngestConfig(paths=[str(listing)], limit=3)) == everything[:3]
    sample = source_urls(IngestConfig(paths=[str(listing)], limit=5, sample_seed=7))
    assert sample == source_urls(IngestConfig(paths=[str(listing)], limit=5, sample_seed=7))  # reproducible
    assert len(sample) == 5 and sample != everything[:5] and sample == [u for u in everything if u in sample]  # listing order kept
    assert source_urls(IngestConfig(paths=[str(listing)], limit=5, sample_seed=8)) != sample
    assert source_urls(IngestConfig(paths=[str(listing)], base_url="s3://commoncrawl/", limit=1)) == ["s3://commoncrawl/" + names[0]]

    # the listing itself served over HTTP, its entries relative to a base on the same server
    (served / "warc.paths.gz").write_bytes(gzip.compress(b"crawl-data/a.warc.gz\ncrawl-data/b.warc.gz\n"))
    with range_server(served) as (host, _):
        raw, docs = ingest_and_extract(tmp_path / "root", IngestConfig(paths=[f"{host}/warc.paths.gz"], base_url=host + "/", limit=1,
                                                                                allow_private_addresses=True))
        assert load_manifest(raw).stats["sources"] == [f"{host}/crawl-data/a.warc.gz"]
        assert {d[3] for d in documents(docs)} == {"a.warc.gz"}


def test_names_that_are_not_warc_files_and_private_addresses_are_refused(tmp_path, served):
    for bad in ("http://169.254.169.254/latest/meta-data/iam#.warc", "http://example.org/page.html?x=.warc.gz"):
        with pytest.raises(ValueError, match="not a WARC file"):
            source_urls(IngestConfig(paths=[bad], allow_private_addresses=True))
    for private in ("http://169.254.169.254/latest/x.warc.gz", "http://127.0.0.1:9/a.warc.gz", "http://[::1]:9/a.warc.gz"):
        with pytest.raises(ValueError, match="private_address"):
            source_urls(IngestConfig(paths=[private]))
    listing = tmp_path / "warc.paths"  # a listing's entries are checked too, once per host
    listing.write_text("crawl-data/a.warc.gz\n")
    with pytest.raises(ValueError, match="private_address"):
        source_urls(IngestConfig(paths=[str(listing)], base_url="http://10.0.0.7/"))
    assert source_urls(IngestConfig(paths=[str(listing)], base_url="http://10.0.0.7/", allow_private_addresses=True)) == [
        "http://10.0.0.7/crawl-data/a.warc.gz"]


# ingest and extract in a process started with the S3 server's environment (endpoint, keys), as
# a run is: the shard processes' forkserver inherits the environment its first start saw
IN_A_FRESH_PROCESS = """
import json, sys
from pathlib import Path
from tasks.ingest import IngestConfig
from formats.manifest import load_manifest
from tests.integration.test_ingest_in_place import documents, ingest_and_extract
raw, docs = ingest_and_extract(Path(sys.argv[1]), IngestConfig.model_validate_json(sys.argv[2]))
print(json.dumps({"raw": str(raw), "docs": documents(docs), "sources": load_manifest(raw).stats["sources"]}))
"""


def test_s3_objects_and_a_listing_in_the_bucket_are_read_in_place(tmp_path, served, s3_server):
    s3_server.make_bucket("llmill-cc")
    fs = s3_server.filesystem()
    for name in ("a.warc.gz", "b.warc.gz"):
        fs.put_file(str(served / "crawl-data" / name), f"llmill-cc/crawl-data/{name}")
    fs.pipe_file("llmill-cc/warc.paths.gz", gzip.compress(b"crawl-data/a.warc.gz\ncrawl-data/b.warc.gz\n"))
    _, local_docs = ingest_and_extract(tmp_path / "local", IngestConfig(paths=[str(served / "crawl-data" / "*.warc.gz")]))
    expected = ["s3://llmill-cc/crawl-data/a.warc.gz", "s3://llmill-cc/crawl-data/b.warc.gz"]
    for name, cfg in (("glob", IngestConfig(paths=["s3://llmill-cc/crawl-data/*.warc.gz"])),
                      ("listing", IngestConfig(paths=["s3://llmill-cc/warc.paths.gz"], base_url="s3://llmill-cc/"))):
        proc = subprocess.run([sys.executable, "-c", IN_A_FRESH_PROCESS, str(tmp_path / name), cfg.model_dump_json()], cwd=ROOT,
                              env={**os.environ, **s3_server.env}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got["sources"] == expected, name
        assert [tuple(d) for d in got["docs"]] == documents(local_docs), name
        assert not list((tmp_path / name).rglob("*.warc*"))  # nothing copied
        recorded = json.loads((Path(got["raw"]) / "sources.json").read_text())
        assert all(r["etag"] and r["size"] == (served / "crawl-data" / Path(r["url"]).name).stat().st_size for r in recorded)
