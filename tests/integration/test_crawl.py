"""The crawler against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.crawl import CrawlConfig, crawl
from tasks.urls import is_public_address, normalize_url
from tests.helpers import Site, html, outcomes, stored

ROOT = Path(__file__).resolve().parents[2]


def cfg(site: Site, **kw) -> CrawlConfig:
    base = dict(
        seeds=[site.url + "/"],
        allow_private_addresses=True,
        requests_per_second_per_host=1000,
        per_host_concurrency=4,
        backoff_base_s=0.01,
        max_retries=3,
        timeout_s=5,
    )
    return CrawlConfig(**{**base, **kw})


def test_robots_disallow_and_crawl_delay(tmp_path):
    routes = {
        "/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /private\nCrawl-delay: 0.3\n"),
        "/": html("home", ["/a", "/b", "/private/secret", "/c"]),
        "/a": html("a"),
        "/b": html("b"),
        "/c": html("c"),
        "/private/secret": html("secret"),
    }
    with Site(routes) as site:
        stats = crawl({}, cfg(site), tmp_path)
    assert site.hits["/private/secret"] == 0
    assert site.hits["/robots.txt"] == 1  # fetched once per host
    assert stats["pages"] == 4
    assert outcomes(tmp_path)[site.url + "/private/secret"]["reason"] == "robots_disallowed"
    starts = [t for t, _, path in site.log if path != "/robots.txt"]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # The server sees arrivals, not sends: each arrival may lag its send by a few ms under load,
    # so one gap may look short by that lag; the span of all three only by the first one's.
    assert len(gaps) == 3 and min(gaps) >= 0.25, gaps
    assert starts[-1] - starts[0] >= 3 * 0.3 - 0.03, gaps


def test_robots_txt_is_read_and_stored_up_to_500_kib(tmp_path):
    # rules before the cap apply; rules past it are ignored, as Google ignores them
    padding = b"# " + b"x" * 1000 + b"\n"
    robots = b"User-agent: *\nDisallow: /private\n" + padding * 1000 + b"Disallow: /late\n"
    routes = {"/robots.txt": (200, {"Content-Type": "text/plain"}, robots), "/": html("home", ["/private/x", "/late"]),
              "/private/x": html("x"), "/late": html("late")}
    with Site(routes) as site:
        crawl({}, cfg(site), tmp_path)
    assert site.hits["/private/x"] == 0 and site.hits["/late"] == 1
    (stored,) = tmp_path.rglob("robots.json")
    assert len(robots) > 1_000_000 and stored.stat().st_size < 520 * 1024


def test_builtin_pydoc_is_crawled_without_allowing_private_addresses(tmp_path):
    # the server the crawl starts itself is let through; any other private address is not
    stats = crawl({}, CrawlConfig(seeds=["builtin:pydoc"], max_pages=5, requests_per_second_per_host=200), tmp_path)
    assert not CrawlConfig().allow_private_addresses and stats["pages"] >= 3, stats  # none before: all refused


def test_retries_on_503_and_honours_retry_after(tmp_path):
    calls = []

    def flaky(handler):
        calls.append(time.monotonic())
        if len(calls) <= 2:
            return 503, {"Retry-After": "1", "Content-Type": "text/html"}, b"busy"
        return html("finally here")

    with Site({"/": html("home", ["/flaky"]), "/flaky": flaky}) as site:
        crawl({}, cfg(site), tmp_path)
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.95 and calls[2] - calls[1] >= 0.95  # Retry-After: 1
    pages = stored(tmp_path)
    assert b"finally here" in pages[site.url + "/flaky"]["body"]


def test_redirect_loop_ends(tmp_path):
    routes = {
        "/": html("home", ["/loop1"]),
        "/loop1": (302, {"Location": "/loop2"}, b""),
        "/loop2": (302, {"Location": "/loop1"}, b""),
    }
    with Site(routes) as site:
        stats = crawl({}, cfg(site), tmp_path)
    assert outcomes(tmp_path)[site.url + "/loop1"]["reason"] == "redirect_loop"
    assert site.hits["/loop1"] + site.hits["/loop2"] <= 4
    assert stats["pages"] == 1


def test_redirect_followed_to_its_target(tmp_path):
    routes = {"/": html("home", ["/old"]), "/old": (301, {"Location": "/new"}, b""), "/new": html("moved here")}
    with Site(routes) as site:
        crawl({}, cfg(site), tmp_path)
    assert b"moved here" in stored(tmp_path)[site.url + "/new"]["body"]
    assert outcomes(tmp_path)[site.url + "/old"]["outcome"] == "redirect"


def test_oversize_bodies_refused_or_cut_off(tmp_path):
    big = b"<html><body>" + b"x" * 3_000_000 + b"</body></html>"
    routes = {
        "/": html("home", ["/declared-big", "/streamed-big"]),
        "/declared-big": (200, {"Content-Type": "text/html"}, big),
        "/streamed-big": (200, {"Content-Type": "text/html", "Content-Length": None}, big),
    }
    with Site(routes) as site:
        crawl({}, cfg(site, max_bytes=1_000_000), tmp_path)
    states = outcomes(tmp_path)
    assert states[site.url + "/declared-big"]["reason"] == "too_large"
    cut = stored(tmp_path)[site.url + "/streamed-big"]
    assert len(cut["body"]) == 1_000_000 and cut["truncated"] == "length"


def test_non_html_skipped_and_other_domains_not_followed(tmp_path):
    routes = {
        "/": None,  # filled below, needs the port
        "/report": (200, {"Content-Type": "application/pdf"}, b"%PDF-1.4 binary"),
        "/ext": html("external"),
    }
    with Site(routes) as site:
        site.routes["/"] = html("home", ["/report", "/picture.png", f"http://localhost:{site.port}/ext"])
        crawl({}, cfg(site), tmp_path)
    states = outcomes(tmp_path)
    assert states[site.url + "/report"]["reason"] == "non_html"
    assert site.url + "/report" not in stored(tmp_path)
    assert site.hits["/picture.png"] == 0
    assert not any(path == "/ext" for _, _, path in site.log)  # localhost is another domain


def test_private_address_refused_unless_allowed(tmp_path):
    with Site({"/": html("home")}) as site:
        stats = crawl({}, cfg(site, allow_private_addresses=False), tmp_path / "refused")
        assert site.log == []  # not even robots.txt was asked for
        assert stats["pages"] == 0
        reason = outcomes(tmp_path / "refused")[site.url]["reason"]
        assert reason.startswith("private_address")
        assert crawl({}, cfg(site, allow_private_addresses=True), tmp_path / "allowed")["pages"] == 1
    for addr in ("169.254.169.254", "10.0.0.1", "127.0.0.1", "::1", "fe80::1", "192.168.1.1"):
        assert not is_public_address(addr), addr
    assert is_public_address("93.184.216.34")


def test_url_normalization_fetches_a_page_once(tmp_path):
    assert normalize_url("HTTP://Example.COM:80/a/../b/?b=2&a=1#frag") == "http://example.com/b/?a=1&b=2"
    assert normalize_url("mailto:x@example.com") is None
    routes = {"/": html("home", ["/p?b=2&a=1", "/p?a=1&b=2#top", "/x/../p?a=1&b=2"]), "/p?a=1&b=2": html("p")}
    with Site(routes) as site:
        crawl({}, cfg(site), tmp_path)
    assert site.hits["/p?a=1&b=2"] == 1


CHAIN = 24


def chain_site() -> dict:
    routes = {"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nCrawl-delay: 0.15\n")}
    routes["/"] = html("start", ["/p0"])
    for i in range(CHAIN):
        routes[f"/p{i}"] = html(f"page {i}", [f"/p{i + 1}"] if i + 1 < CHAIN else [])
    return routes


def test_killed_crawl_resumes_without_refetching(tmp_path):
    routes = chain_site()
    with Site(routes) as site:
        config = cfg(site, per_host_concurrency=1, max_depth=100)
        out = tmp_path / "killed"
        script = (
            "import sys; from pathlib import Path; from tasks.crawl import crawl, CrawlConfig; "
            "crawl({}, CrawlConfig.model_validate_json(sys.argv[1]), Path(sys.argv[2]))"
        )
        proc = subprocess.Popen([sys.executable, "-c", script, config.model_dump_json(), str(out)], cwd=ROOT)
        journal = out / "state" / "journal.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = journal.read_text().count('"outcome":"page"') if journal.exists() else 0
            if done >= 8:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (out / "state.json").exists()  # it really died mid-way
        first_pass = site.hits["/"] + sum(site.hits[f"/p{i}"] for i in range(CHAIN))
        assert 8 <= first_pass < CHAIN
        # the delay was there to land the kill mid-way; the two whole crawls below need none
        routes["/robots.txt"] = (200, {"Content-Type": "text/plain"}, b"User-agent: *\nCrawl-delay: 0.01\n")

        stats = crawl({}, config, out)
        assert stats["resumed"] is True
        for path in ["/"] + [f"/p{i}" for i in range(CHAIN)]:
            assert site.hits[path] == 1, (path, site.hits[path])
        resumed = set(stored(out))

        fresh = tmp_path / "fresh"
        crawl({}, config, fresh)
        assert resumed == set(stored(fresh)) and len(resumed) == CHAIN + 1


def test_recrawl_uses_last_modified_and_spots_servers_that_ignore_validators(tmp_path):
    """If-Modified-Since where a server gives no ETag; a server that ignores validators and resends
    the same bytes costs a request but stores nothing; a page that now answers 410 is gone."""
    from formats.raw import read_changes
    from tasks.recrawl import RecrawlConfig, recrawl
    from tasks.stage import run_stage

    stamp = "Sat, 28 Nov 2026 10:00:00 GMT"
    seen: dict[str, dict] = {}

    def dated(handler):
        seen["/dated"] = dict(handler.headers)
        if handler.headers.get("If-Modified-Since") == stamp:
            return 304, {"Content-Length": "0"}, b""
        status, headers, body = html("a page that has a date but no etag")
        return status, {**headers, "Last-Modified": stamp}, body

    def careless(handler):
        seen["/careless"] = dict(handler.headers)
        status, headers, body = html("a page whose server ignores conditional requests")
        return status, {**headers, "ETag": '"v1"'}, body

    pages = {"/": html("home", ["/dated", "/careless", "/doomed"]), "/dated": dated, "/careless": careless,
             "/doomed": html("a page about to be removed")}
    with Site(pages) as site:
        first = run_stage("crawl", 1, crawl, {}, cfg(site), tmp_path)
        assert outcomes(first)[site.url + "/dated"]["last_modified"] == stamp
        pages["/doomed"] = (410, {"Content-Type": "text/html"}, b"gone")
        again = run_stage("recrawl", 1, recrawl, {"previous": str(first)}, RecrawlConfig(crawl=cfg(site), at="t1"), tmp_path)
    assert seen["/dated"]["If-Modified-Since"] == stamp and "If-None-Match" not in seen["/dated"]
    assert seen["/careless"]["If-None-Match"] == '"v1"'
    state = outcomes(again)
    assert state[site.url + "/dated"]["reason"] == "304"
    assert state[site.url + "/careless"]["reason"] == "same_digest"
    assert stored(again) == {}  # nothing changed, so nothing stored
    assert [(c["url"], c["change"]) for c in read_changes(str(again))] == [(site.url + "/doomed", "gone")]
