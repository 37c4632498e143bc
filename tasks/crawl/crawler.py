"""The crawler: the frontier, the order its visits are committed in, and the crawl's state.

Visits (tasks/crawl/fetch.py) run up to `concurrency` at once; their results are committed one
by one in frontier order, so the same site gives the same crawl. Every URL that enters the
frontier or is settled goes to the journal first (tasks/crawl/state.py), and each stored page
to the WARC files (tasks/crawl/warc_sink.py): a killed crawl resumes from both without
fetching a stored page again. `state.json` keeps each URL's outcome and validators (ETag,
Last-Modified) for a refresh's conditional requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import Counter, deque
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tasks.crawl.crawl_config import CrawlConfig
from tasks.crawl.fetch import Fetcher, Visit
from tasks.crawl.politeness import Politeness
from tasks.crawl.state import KEPT, Journal, StorageFailed, stored_urls
from tasks.crawl.warc_sink import Page, WarcSink
from tasks.net_guard import GuardedTransport
from tasks.pydoc_site import BASE as PYDOC_BASE
from tasks.pydoc_site import SEED as PYDOC_SEED
from tasks.pydoc_site import serve_pydoc
from tasks.stage import Progress
from tasks.urls import host_of, in_allowed_domains, looks_non_html, normalize_url, origin_of


class Crawler:
    """`previous`: the state.json of an earlier crawl. Its pages are fetched again with conditional
    requests (If-None-Match / If-Modified-Since), so unchanged pages cost one 304 and no storage."""

    def __init__(self, cfg: CrawlConfig, seeds: list[str], out: Path, progress: Progress, previous: dict | None = None,
                 trusted_origins: tuple[str, ...] = (), served: dict[str, str] | None = None):
        self.cfg = cfg
        self.trusted_origins = set(trusted_origins)  # servers exempt from the address rule
        self.served = dict(served or {})  # origin in URLs -> origin of a server this process started (builtin:pydoc)
        self.previous: dict[str, dict] = dict((previous or {}).get("urls", {}))
        self.previous_frontier: list[dict] = list((previous or {}).get("frontier", []))
        self.out = out
        self.progress = progress
        self.seeds = [u for u in (normalize_url(s) for s in seeds) if u]
        self.allowed = cfg.allowed_domains or sorted({host_of(u) for u in self.seeds})
        self.stats: Counter = Counter()
        state = out / "state"
        state.mkdir(parents=True, exist_ok=True)
        self.politeness = Politeness(cfg, state / "robots.json", self.stats)
        self.fetcher = Fetcher(cfg, self.politeness, self.allowed, self.validators, self.stats)
        self._restore(state / "journal.jsonl")
        self.journal = Journal(state / "journal.jsonl")
        self.sink = WarcSink(out / "warc", cfg.warc_file_bytes)

    def _restore(self, journal_path: Path) -> None:
        self.seen: dict[str, int] = {}
        self.done: dict[str, dict] = {}
        for e in Journal.read(journal_path):
            if e["e"] == "seen":
                self.seen.setdefault(e["url"], e["depth"])
            elif e["e"] == "done":
                self.done[e["url"]] = e
        for url in stored_urls(self.out / "warc"):
            self.done.setdefault(url, {"e": "done", "url": url, "outcome": "page"})
        self.resumed = bool(self.seen)
        self.pages = sum(1 for e in self.done.values() if e["outcome"] in KEPT)

    def validators(self, url: str) -> dict[str, str]:
        """Conditional-request headers for a page an earlier crawl stored."""
        known = self.previous.get(url, {})
        headers = {}
        if known.get("outcome") in KEPT:
            if known.get("etag"):
                headers["If-None-Match"] = known["etag"]
            if known.get("last_modified"):
                headers["If-Modified-Since"] = known["last_modified"]
        return headers

    def commit(self, url: str, depth: int, visit: Visit) -> list[tuple[str, int]]:
        """The state half of a visit, in frontier order: settle it, store its page, and return
        the links it adds to the frontier (in page order)."""
        if visit.settle is not None:
            self.settle(url, *visit.settle)
            return []
        chain, outcome = visit.chain, visit.outcome
        assert outcome is not None
        for hop in chain[1:]:  # a redirect to a page this crawl knows or will visit: recorded as an alias only
            if hop != url and (hop in self.done or hop in self.seen):
                self.settle(url, "redirect", f"to {hop}")
                return []
        current = chain[-1]
        if outcome.kind == "not_modified" or (outcome.kind == "page" and self.unchanged(current, outcome.page)):
            # an unchanged page keeps what the earlier crawl knew of it (validators, WARC file)
            known = {k: v for k, v in self.previous.get(current, {}).items() if k not in ("e", "url", "outcome", "reason", "at", "status", "warc")}
            reason = "304" if outcome.kind == "not_modified" else "same_digest"
            self.settle(current, "not_modified", reason, status=outcome.status, **known)
            return []
        if outcome.kind != "page":
            self.settle(url, outcome.kind, outcome.reason, status=outcome.status)
            return []
        page = outcome.page
        assert page is not None
        page.url = current
        found = []
        if depth < self.cfg.max_depth:
            for link in extract_links(page.body, current):
                if link not in self.seen and in_allowed_domains(link, self.allowed) and not looks_non_html(link):
                    self.seen[link] = depth + 1
                    self.journal.write(e="seen", url=link, depth=depth + 1)
                    found.append((link, depth + 1))
        warc = self.sink.write(page)
        headers = {k.lower(): v for k, v in page.headers}
        for alias in chain[:-1]:
            self.settle(alias, "redirect", f"to {current}")
        self.settle(
            current,
            "page",
            status=page.status,
            etag=headers.get("etag"),
            last_modified=headers.get("last-modified"),
            warc=warc,
            truncated=page.truncated,
            digest=body_digest(page.body),
        )
        return found

    def unchanged(self, url: str, page: Page | None) -> bool:
        """A server that ignores conditional requests resent a page byte for byte."""
        known = self.previous.get(url, {})
        return page is not None and known.get("outcome") in KEPT and known.get("digest") == body_digest(page.body)

    def settle(self, url: str, outcome: str, reason: str = "", **extra) -> None:
        extra.setdefault("depth", self.seen.get(url, 0))
        event = {"e": "done", "url": url, "outcome": outcome, "reason": reason, "at": time.time(), **extra}
        self.done[url] = event
        self.journal.write(**event)
        self.stats[f"{outcome}:{reason.split(':')[0]}" if reason else outcome] += 1
        if outcome in KEPT:
            self.pages += 1
            self.progress(self.pages, self.cfg.max_pages)

    async def run(self) -> None:
        known = [(u, e.get("depth", 0)) for u, e in self.previous.items() if e.get("outcome") in KEPT]
        known += [(f["url"], f["depth"]) for f in self.previous_frontier]
        for url, depth in [(u, 0) for u in self.seeds] + known:
            if url not in self.seen:
                self.seen[url] = depth
                self.journal.write(e="seen", url=url, depth=depth)
        # a refresh revisits the pages it knows before spending its page budget on new ones; within
        # that, by depth in discovery order (self.seen keeps the journal's order; the sort is
        # stable), which is the order an uninterrupted crawl's frontier has: a resumed crawl spends
        # its page budget on the same pages
        pending = sorted(((self.previous.get(u, {}).get("outcome") not in KEPT, d, u) for u, d in self.seen.items() if u not in self.done),
                         key=lambda p: p[:2])
        frontier = deque((url, depth) for _, depth, url in pending)
        limits = httpx.Limits(max_connections=self.cfg.concurrency)
        headers = {"User-Agent": self.cfg.user_agent, "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"}
        trusted = {host_port(o) for o in self.trusted_origins}
        served = {host_port(name): host_port(real) for name, real in self.served.items()}
        transport = GuardedTransport(limits, trusted, allow_private=self.cfg.allow_private_addresses, served=served)
        # Up to `concurrency` visits are fetched at once, but their results are committed one by
        # one in frontier order (a reorder buffer): which pages the budget buys, the order of the
        # frontier and of the WARC records do not depend on which response came first, so the
        # same site gives the same crawl. A visit starts only while the pages so far plus those
        # in flight are under the budget: the first max_pages pages in frontier order are kept.
        window: deque[tuple[str, int, asyncio.Task]] = deque()
        async with httpx.AsyncClient(headers=headers, limits=limits, follow_redirects=False, transport=transport) as client:
            try:
                while True:
                    while frontier and len(window) < self.cfg.concurrency and self.pages + len(window) < self.cfg.max_pages:
                        url, depth = frontier.popleft()
                        if url not in self.done:
                            window.append((url, depth, asyncio.create_task(self.fetcher.chain(client, url))))
                    if not window:
                        break  # the frontier is empty, or the page budget is spent (the rest stays in the frontier)
                    url, depth, task = window.popleft()
                    try:
                        visit = await task
                    except Exception as e:  # one bad page never stops the crawl
                        visit = Visit([url], settle=("failed", f"error: {type(e).__name__}: {e}"))
                    if url in self.done:  # settled meanwhile, as the target of an earlier redirect
                        continue
                    try:
                        frontier.extend(self.commit(url, depth, visit))
                    except StorageFailed:
                        raise  # ends the crawl
                    except Exception as e:  # noqa: BLE001
                        self.settle(url, "failed", f"error: {type(e).__name__}: {e}")
            finally:
                for _, _, task in window:
                    task.cancel()
                await asyncio.gather(*(task for _, _, task in window), return_exceptions=True)

    def close(self) -> dict:
        self.sink.close()
        self.journal.close()
        return self.write_state()

    def write_state(self) -> dict:
        """state.json: per-URL outcome and validators (ETag, Last-Modified) for refreshes."""
        frontier = sorted(u for u in self.seen if u not in self.done)
        # a refresh's state carries forward what it did not revisit, so the next refresh knows it
        urls = {u: e for u, e in self.previous.items() if u not in self.done}
        urls.update({u: {k: v for k, v in e.items() if k not in ("e", "url")} for u, e in self.done.items()})
        state = {
            "seeds": self.seeds,
            "allowed_domains": self.allowed,
            "urls": dict(sorted(urls.items())),
            "frontier": [{"url": u, "depth": self.seen[u]} for u in frontier],
        }
        (self.out / "state.json").write_text(json.dumps(state, indent=1))
        outcomes = Counter(e["outcome"] for e in self.done.values())
        reasons = Counter(
            f"{e['outcome']}:{e.get('reason', '').split(':')[0]}"
            for e in self.done.values()
            if e["outcome"] in ("skipped", "failed")
        )
        return {
            "pages": outcomes.get("page", 0),
            "urls_settled": len(self.done),
            "frontier_left": len(frontier),
            "outcomes": dict(outcomes),
            "not_fetched": dict(reasons),
            "requests": self.stats["requests"],
            "conditional_requests": self.stats["conditional_requests"],
            "retries": self.stats["retries"],
            "robots_fetched": self.stats["robots_fetched"],
            "resumed": self.resumed,
            "warc_files": len(list((self.out / "warc").glob("*.warc.gz"))),
        }


def host_port(origin: str) -> tuple[str, int]:
    p = urlsplit(origin)
    return p.hostname or "", p.port or (443 if p.scheme == "https" else 80)


def body_digest(body: bytes) -> str:
    return "sha1:" + hashlib.sha1(body).hexdigest()


def extract_links(body: bytes, base: str) -> list[str]:
    import lxml.html

    try:
        doc = lxml.html.document_fromstring(body)
    except Exception:
        return []
    base_el = doc.find(".//base[@href]")
    base_url = normalize_url(base_el.get("href"), base) if base_el is not None else None
    links = []
    for el in doc.iter("a", "area"):
        href = el.get("href")
        if href and not href.startswith(("#", "javascript:", "mailto:")):
            url = normalize_url(href, base_url or base)
            if url:
                links.append(url)
    return list(dict.fromkeys(links))


def run_to_end(crawler: Crawler) -> dict:
    """Run a crawl and close it (WARC, journal, state.json); returns its stats. When the crawl
    fails, its error is the one raised, even where closing fails too (a full disk)."""
    try:
        asyncio.run(crawler.run())
    except BaseException:
        with contextlib.suppress(OSError):
            crawler.close()
        raise
    return crawler.close()


class served_seeds:
    """Start the pydoc server for builtin:pydoc while the crawl runs. Its pages are crawled under
    the fixed name pydoc_site.BASE, whatever port the server got, so a rerun, a resumed crawl
    and a refresh all see the same URLs."""

    def __init__(self, cfg: CrawlConfig, out: Path):
        self.cfg = cfg
        self.ctx = None
        self.seeds: list[str] = list(cfg.seeds)
        self.served: dict[str, str] = {}  # fixed origin -> the origin the server listens on

    def __enter__(self) -> "served_seeds":
        if PYDOC_SEED in self.seeds:
            self.ctx = serve_pydoc(self.cfg.pydoc_port)
            base = self.ctx.__enter__()
            self.served = {origin_of(PYDOC_BASE): origin_of(base)}
            self.seeds = [PYDOC_BASE if s == PYDOC_SEED else s for s in self.seeds]
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def run_crawler(cfg: CrawlConfig, out: Path, progress: Progress, previous: dict | None = None) -> tuple[dict, dict[str, dict]]:
    """Crawl from the config's seeds into `out` (warc/, state/, state.json), serving builtin:pydoc
    while it runs; resumes a partial `out`. `previous`: an earlier crawl's state.json, for a
    refresh. Returns the crawl's stats and every URL it settled (its `done` events)."""
    with served_seeds(cfg, out) as served:
        crawler = Crawler(cfg, served.seeds, out, progress, previous=previous, served=served.served)
        return run_to_end(crawler), crawler.done
