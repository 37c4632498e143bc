"""ingest: existing WARC / WARC.gz files enter the raw/ contract where they lie, uncopied.

`ingest.paths` holds local paths, globs, fsspec URLs (https://data.commoncrawl.org/...,
s3://commoncrawl/...) or a Common Crawl `warc.paths.gz` listing, whose relative entries are
joined to `ingest.base_url`; `ingest.limit` with `ingest.sample_seed` takes a reproducible
subset of a snapshot. The dataset is one file, `sources.json`: each source's URL, size and
ETag (or modification time). extract reads the bytes from there with ranged reads, shard by
shard, and refuses a source whose size or ETag has changed since.

The sources' state is part of the dataset's place (SOURCE_STATE, read by tasks/stage.py), so a
changed source is a new dataset while a rerun over unchanged sources finds the old one. A
damaged file is not refused here but quarantined record by record in extract, so one bad file
never costs the others.
"""

from __future__ import annotations

import gzip
import io
import random
import time
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field

from formats.manifest import digest_of
from formats.raw import write_sources
from tasks.orchestration import stage_task
from tasks.stage import Progress, no_progress
from tasks.urls import private_address_reason
from tasks.warc_ranges import describe, source_fs

VERSION = 2
COMMON_CRAWL_HTTPS = "https://data.commoncrawl.org/"  # or s3://commoncrawl/ from inside AWS us-east-1


class IngestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(default_factory=list, description="WARC files, globs, fsspec URLs, or Common Crawl warc.paths(.gz) listings")
    base_url: str = Field(COMMON_CRAWL_HTTPS, description="prefix of a listing's relative entries (Common Crawl: its HTTPS host or s3://commoncrawl/)")
    limit: int = Field(0, ge=0, description="read at most this many WARC files (0: all)")
    sample_seed: int | None = Field(None, description="with limit: a reproducible random subset instead of the first files")
    allow_private_addresses: bool = Field(
        False, description="read http(s) sources on private, loopback and link-local addresses (cloud metadata among them)")


def is_listing(path: str) -> bool:
    return path.split("?", 1)[0].endswith((".paths.gz", ".paths"))


def is_warc_name(url: str) -> bool:
    """A WARC file's name, judged without the query and fragment (`...#.warc` is no WARC file)."""
    return url.split("#", 1)[0].split("?", 1)[0].endswith((".warc", ".warc.gz"))


def listing_entries(path: str, base_url: str, allow_private: bool = False) -> list[str]:
    fs, inner = source_fs(path, allow_private)
    with fs.open(inner, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    lines = [line.strip() for line in io.StringIO(data.decode("utf-8"))]
    return [line if "://" in line else base_url.rstrip("/") + "/" + line.lstrip("/") for line in lines if line]


def check_address(url: str, cfg: IngestConfig) -> None:
    """http(s) sources go through the crawler's address rule: no private, loopback or
    link-local address (cloud metadata) unless the config allows it."""
    if url.lower().startswith(("http://", "https://")) and not cfg.allow_private_addresses:
        reason = private_address_reason(url)
        if reason and not reason.startswith("dns_error"):  # a name that does not resolve fails where it is read, by URL
            raise ValueError(f"{url}: refused ({reason}); set ingest.allow_private_addresses to read it")


def source_urls(cfg: IngestConfig) -> list[str]:
    """Every WARC file the config names, in order: local files as absolute paths, others as URLs."""
    urls: list[str] = []
    for p in cfg.paths:
        if not is_listing(p) and not any(c in p for c in "*?[") and not is_warc_name(p):
            raise ValueError(f"{p}: not a WARC file (expected .warc or .warc.gz)")
        check_address(p, cfg)
        if is_listing(p):
            urls += listing_entries(p, cfg.base_url, cfg.allow_private_addresses)
            continue
        for of in fsspec.open_files(p, mode="rb", expand=True):
            urls.append(of.path if isinstance(of.fs, LocalFileSystem) else of.full_name)
    bad = [u for u in urls if not is_warc_name(u)]
    if bad:
        raise ValueError(f"{bad[0]}: not a WARC file (expected .warc or .warc.gz)")
    for host in dict.fromkeys(u.split("/", 3)[2] for u in urls if u.lower().startswith(("http://", "https://"))):
        check_address(next(u for u in urls if u.split("/", 3)[2] == host), cfg)  # once per host: a listing names thousands
    if not urls:
        raise FileNotFoundError(f"ingest.paths matched no file: {cfg.paths}")
    if cfg.limit and len(urls) > cfg.limit:
        if cfg.sample_seed is None:
            urls = urls[: cfg.limit]
        else:
            keep = set(random.Random(cfg.sample_seed).sample(range(len(urls)), cfg.limit))
            urls = [u for i, u in enumerate(urls) if i in keep]
    return urls


_described: dict[tuple, tuple[float, list[dict]]] = {}
_DESCRIBED_FOR_S = 60.0  # the cache key, the task and the stage each ask within a run: stat once


def describe_sources(cfg: IngestConfig) -> list[dict]:
    key = (tuple(cfg.paths), cfg.base_url, cfg.limit, cfg.sample_seed, cfg.allow_private_addresses)
    hit = _described.get(key)
    if hit and time.monotonic() - hit[0] < _DESCRIBED_FOR_S:
        return hit[1]
    sources = [describe(u, cfg.allow_private_addresses) for u in source_urls(cfg)]
    _described[key] = (time.monotonic(), sources)
    return sources


def SOURCE_STATE(cfg: IngestConfig) -> str:  # noqa: N802 - the hook tasks/stage.py looks up by name
    return digest_of(describe_sources(cfg))


def ingest(inputs: dict, cfg: IngestConfig, out: Path, progress: Progress = no_progress) -> dict:
    if inputs:
        raise ValueError("ingest takes no input datasets")
    sources = describe_sources(cfg)
    write_sources(out, sources)
    progress(len(sources), len(sources))
    return {"warc_files": len(sources), "bytes": sum(s["size"] for s in sources), "sources": [s["url"] for s in sources],
            "copied_bytes": 0}


ingest_task = stage_task(ingest)
