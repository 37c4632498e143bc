"""The incremental data refresh against a local site: conditional requests, only the changed
pages processed, and the new token version equal to a full rebuild of the changed site."""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from flows.data_flow import data_flow
from flows.llmill_config import LlmillConfig, load_config
from flows.pretrain_flow import pretrain_flow
from flows.refresh_flow import Versions, data_refresh_flow
from formats.documents import doc_id
from formats.files import file_sha256
from formats.manifest import load_manifest
from formats.token_shards import SPLITS, doc_index, open_tokens, split_of, split_shards
from model.token_windows import TokenWindows
from tasks.stage import run_stage
from tasks.tokenize import VERSION as TOKENIZE_VERSION
from tasks.tokenize import tokenize
from tests.helpers import PYDOCS, Site

pytestmark = [pytest.mark.prefect_server, pytest.mark.trainer]

PAGES = 12
VAL_FRACTION = 0.25


class ChangingSite:
    """Real Python docs pages behind an index, served with ETag and Last-Modified; answers 304 to
    a matching If-None-Match. Every request's conditional headers are recorded."""

    def __init__(self):
        files = sorted((PYDOCS / "library").glob("*.html"))[20 : 20 + PAGES + 2]
        # the pages' own links would lead off this site; only the index and added links count
        self.bodies = {f"/p{i}.html": re.sub(rb'href="[^"]*"', b'href="#"', f.read_bytes()) for i, f in enumerate(files[:PAGES])}
        self.spare = [re.sub(rb'href="[^"]*"', b'href="#"', f.read_bytes()) for f in files[PAGES:]]
        self.index = "".join(f'<a href="/p{i}.html">page {i}</a> ' for i in range(PAGES)).encode()
        self.requests: list[tuple[str, bool]] = []  # (path, conditional)
        routes = {"/": self.route, "/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")}
        routes.update({p: self.route for p in [*self.bodies, "/new0.html", "/new1.html"]})
        self.site = Site(routes)

    def body(self, path: str) -> bytes | None:
        if path == "/":
            return b"<html><head><title>index</title></head><body>" + self.index + b"</body></html>"
        return self.bodies.get(path)

    def route(self, handler):
        path = handler.path
        self.requests.append((path, bool(handler.headers.get("If-None-Match") or handler.headers.get("If-Modified-Since"))))
        body = self.body(path)
        if body is None:
            return 404, {"Content-Type": "text/html"}, b"<html>gone</html>"
        etag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
        headers = {"Content-Type": "text/html; charset=utf-8", "ETag": etag, "Last-Modified": "Sun, 29 Nov 2026 00:00:00 GMT"}
        if handler.headers.get("If-None-Match") == etag:
            return 304, {"ETag": etag, "Content-Length": "0"}, b""
        return 200, headers, body

    def change(self) -> None:
        """Three pages change (one paragraph each, two of them now link to a new page); two added."""
        for i, path in enumerate(("/p0.html", "/p1.html", "/p2.html")):
            link = f'<p><a href="/new{i}.html">see also</a></p>' if i < 2 else ""
            extra = f"<p>Revised on refresh day: section {i} now documents the behaviour of the cache when it is cold.</p>{link}"
            self.bodies[path] = self.bodies[path].replace(b"</body>", extra.encode() + b"</body>", 1)
        self.bodies["/new0.html"], self.bodies["/new1.html"] = self.spare

    def __enter__(self):
        self.site.__enter__()
        return self

    def __exit__(self, *exc):
        self.site.__exit__(*exc)


def unchanged_in_val(site_url: str, seed: int) -> set[str]:
    """The document ids of the pages that never change (p3...) that fall in val under `seed`."""
    ids = (doc_id(f"{site_url}/p{i}.html") for i in range(3, PAGES))
    return {d for d in ids if split_of(d, seed, VAL_FRACTION) == "val"}


def split_seed(site_url: str, at_least: int = 3) -> int:
    """The split is by a hash of the URL, and the site's port (part of every URL) differs from run
    to run: the first seed under which at least `at_least` of the pages that never change fall in
    val, so neither version's val split can be left without a live document."""
    return next(seed for seed in itertools.count() if len(unchanged_in_val(site_url, seed)) >= at_least)


def config(root: Path, site_url: str, **refresh) -> LlmillConfig:
    return LlmillConfig.model_validate({
        "root": str(root),
        "crawl": {"seeds": [site_url + "/"], "allow_private_addresses": True, "requests_per_second_per_host": 200,
                  "max_depth": 2, "max_retries": 0, "max_pages": 100},
        "extract": {"workers": 1},
        "clean": {**load_config().clean.model_dump(mode="json"), "workers": 1},
        "dedup": {"workers": 1},
        "tokenizer": {"vocab_size": 512},
        "tokenize": {"val_fraction": VAL_FRACTION, "seed": split_seed(site_url)},
        "pretrain": {"model": {"preset": "test-tiny"},
                     "train": {"steps": 6, "micro_batch_size": 4, "eval_every": 3, "checkpoint_every": 3, "warmup_steps": 1, "trackers": [],
                               "seq_len": 64}},
        "refresh": refresh,
    })


def live_documents(tokens_dataset: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """doc id -> (split, its tokens) over the live documents of a token dataset version."""
    docs = {}
    for split in SPLITS:
        for shard, retired in split_shards(tokens_dataset, split):
            tokens, index = open_tokens(shard), doc_index(shard)
            for d, s, n in zip(index.column("doc_id").to_pylist(), index.column("start").to_pylist(), index.column("length").to_pylist()):
                if d not in retired:
                    assert d not in docs, f"document {d} is live twice"
                    docs[d] = (split, tuple(tokens[s : s + n].tolist()))
    return docs


def test_refresh_fetches_conditionally_processes_only_changes_and_equals_a_full_rebuild(tmp_path, prefect_harness):
    with ChangingSite() as site:
        cfg = config(tmp_path / "data", site.site.url, continue_pretraining=True, min_new_tokens=1, continue_steps=4)
        pre = pretrain_flow(cfg)  # the first version, its tokenizer and a model the refresh continues from
        first, tokenizer = pre["shards"], pre["tokenizer"]
        first_files = {f.path: f.sha256 for f in load_manifest(first).files}
        first_stats = load_manifest(first).stats
        assert first_stats["documents"]["train"] + first_stats["documents"]["val"] == PAGES  # the index is too short to pass clean
        # the pages split_seed counted on are in val, where they stay
        assert {d for d, (split, _) in live_documents(first).items() if split == "val"} >= unchanged_in_val(site.site.url, cfg.tokenize.seed)

        site.change()
        site.requests.clear()
        refreshed = data_refresh_flow(cfg, at="2026-11-29T03:00:00+00:00")

        # conditional requests for every known page; only the new pages asked for plainly
        assert sorted(p for p, conditional in site.requests if not conditional) == ["/new0.html", "/new1.html"]
        assert sorted(p for p, conditional in site.requests if conditional) == sorted(["/", *[f"/p{i}.html" for i in range(PAGES)]])
        crawl = load_manifest(refreshed["raw"]).stats
        assert crawl["changes"] == {"new": 2, "changed": 3, "gone": 0} and crawl["unchanged"] == PAGES + 1 - 3
        # only those five pages went through extract, clean, dedup and tokenize
        assert load_manifest(refreshed["docs"]).stats["html_responses"] == 5
        assert load_manifest(refreshed["clean"]).stats["documents_in"] == 5
        kept = load_manifest(refreshed["clean"]).stats["documents_out"]
        assert kept >= 4 and load_manifest(refreshed["dedup"]).stats["documents_in"] == kept
        v2 = load_manifest(refreshed["tokens"]).stats
        assert v2["version"] == 2 and v2["added"]["documents"] == load_manifest(refreshed["paragraphs"]).stats["documents_out"]
        assert v2["retired"]["documents"] == 3 and v2["retired"]["by_reason"]["changed"] == 3

        # a full rebuild of the changed site, with the same tokenizer, gives the same corpus
        rebuild_cfg = config(tmp_path / "rebuild", site.site.url)
        rebuilt_docs = data_flow(rebuild_cfg)["documents"]
        rebuilt = run_stage("tokenize", TOKENIZE_VERSION, tokenize, {"documents": rebuilt_docs, "tokenizer": tokenizer}, rebuild_cfg.tokenize, tmp_path / "rebuild")
        full = load_manifest(rebuilt).stats
        for key in ("tokens", "documents", "bytes"):
            assert v2[key] == full[key], key
        assert live_documents(refreshed["tokens"]) == live_documents(str(rebuilt))
        for split in SPLITS:  # the loader serves exactly the live tokens
            windows = TokenWindows(Path(refreshed["tokens"]) / split, 8)
            assert windows.tokens == full["tokens"][split]
            assert np.array_equal(np.sort(np.concatenate(windows.shards)), np.sort(np.concatenate([open_tokens(f) for f, _ in split_shards(rebuilt, split)])))

        # the first version is untouched and still reads as it was
        assert {f.path: file_sha256(Path(first) / f.path) for f in load_manifest(first).files} == first_files
        assert TokenWindows(Path(first) / "train", 8).tokens == first_stats["tokens"]["train"]

        # enough new tokens: pretraining continued from the first run, on version 2
        run = load_manifest(refreshed["run"])
        # the manifest lists its inputs by name: continue_from, shards, tokenizer
        assert run.inputs == [load_manifest(p).digest for p in (pre["run"], refreshed["tokens"], tokenizer)]
        assert run.stats["steps"] == 4

        # a second refresh: one page gone, nothing else changed -> nothing fetched in full
        del site.bodies["/p5.html"]
        site.requests.clear()
        again = data_refresh_flow(cfg, at="2026-11-30T03:00:00+00:00")
        assert all(conditional for p, conditional in site.requests)
        assert load_manifest(again["raw"]).stats["changes"] == {"new": 0, "changed": 0, "gone": 1}
        assert load_manifest(again["docs"]).stats["documents"] == 0
        v3 = load_manifest(again["tokens"]).stats
        before = live_documents(refreshed["tokens"])
        after = live_documents(again["tokens"])
        assert set(before) - set(after) == {pq.read_table(Path(again["raw"]) / "changes.parquet").column("doc_id")[0].as_py()}
        assert sum(v3["tokens"].values()) == sum(v2["tokens"].values()) - (len(before[next(iter(set(before) - set(after)))][1]) + 1)
        assert [e["version"] for e in Versions(cfg.root, first).entries] == [2, 3]

        # rerunning a refresh (a retried flow run: the same time) reuses its datasets
        assert data_refresh_flow(cfg, at="2026-11-30T03:00:00+00:00")["tokens"] == again["tokens"]
        assert [e["version"] for e in Versions(cfg.root, first).entries] == [2, 3]


def test_a_refresh_on_an_object_store_root_runs_on_another_node_against_the_index_in_the_bucket(tmp_path, prefect_harness, s3_server,
                                                                                               monkeypatch):
    """The root on S3 (moto): the first data flow on one node, the refresh on another with an
    empty cache. The refresh deduplicates against the batches the first run kept, read from the
    index's log in the bucket, and its list of versions is in the bucket too."""
    from formats import store
    from tasks.dedup import DedupConfig

    bucket = "llmill-refresh"
    s3_server.make_bucket(bucket)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LLMILL_CACHE_DIR", str(tmp_path / "node-a"))
    with ChangingSite() as site:
        cfg = config(f"s3://{bucket}/data", site.site.url)  # type: ignore[arg-type]
        base = data_flow(cfg)
        site.change()
        monkeypatch.setenv("LLMILL_CACHE_DIR", str(tmp_path / "node-b"))
        refreshed = data_refresh_flow(cfg, at="2026-11-29T03:00:00+00:00")

    assert load_manifest(refreshed["raw"]).stats["changes"] == {"new": 2, "changed": 3, "gone": 0}

    def ids(dataset: str) -> set[str]:
        local = store.local_copy(dataset)
        return {i for f in load_manifest(dataset).files if f.path.startswith("docs/") for i in pq.read_table(local / f.path)["id"].to_pylist()}

    kept_before, batch = ids(base["dedup"]), ids(refreshed["clean"])
    stats = load_manifest(refreshed["dedup"]).stats
    assert stats["index"] == f"s3://{bucket}/data/index/minhash-{DedupConfig().index_key()}"
    # every document the first run kept is in the index but those of this batch (its changed pages)
    assert stats["index_documents_before"] == len(kept_before - batch) > 0, (stats, len(kept_before), len(batch))
    tokens = load_manifest(refreshed["tokens"]).stats
    assert tokens["version"] == 2 and tokens["added"]["documents"] == stats["documents_out"]
    # the list of versions is in the bucket, named by the first version's token dataset
    fs = s3_server.filesystem()
    listings = fs.glob(f"{bucket}/data/refresh/*.json")
    assert len(listings) == 1, listings
    versions = Versions(cfg.root, Path(listings[0]).stem)
    assert [e["version"] for e in versions.entries] == [2] and versions.entries[0]["tokens"] == refreshed["tokens"]
