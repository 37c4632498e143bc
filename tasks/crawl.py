"""crawl: a polite async web crawler that writes WARC.gz files.

Politeness: robots.txt (disallow, crawl-delay) fetched once per host, a per-host request
interval and concurrency cap, bounded redirects, bounded bodies. Safety: private, loopback
and link-local addresses are refused unless the config allows them, on every connection the
client opens (tasks/net_guard.py): pages, redirect hops and robots.txt alike.

Resumability: the crawl keeps an append-only journal beside its WARC files. A crawl killed
mid-way restarts from the journal and the WARC files (the WARC is the truth for what was
stored; a torn last record is cut off), so no stored page is fetched twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import io
import json
import random
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx
from prefect import task
from pydantic import BaseModel, ConfigDict, Field
from protego import Protego
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from formats.jsonl import cut_torn_tail, read_records
from tasks.http_body import BodyDecodingError, BoundedBody, UnsupportedEncoding
from tasks.net_guard import AddressRefused, GuardedTransport
from tasks.pydoc_site import BASE as PYDOC_BASE
from tasks.pydoc_site import SEED as PYDOC_SEED
from tasks.pydoc_site import serve_pydoc
from tasks.orchestration import STAGE_CACHE, prefect_stage
from tasks.stage import Progress, no_progress
from tasks.urls import (
    host_of,
    in_allowed_domains,
    looks_non_html,
    normalize_url,
    origin_of,
)

VERSION = 2  # 2: builtin:pydoc under a fixed name
KEPT = ("page", "not_modified")  # outcomes that leave a page in the corpus
HTML_TYPES = ("text/html", "application/xhtml+xml")
ROBOTS_MAX_BYTES = 500 * 1024  # of a robots.txt, what Google reads and what is stored
DISALLOW_ALL = "User-agent: *\nDisallow: /\n"  # robots.txt unreachable or 5xx: keep out (RFC 9309)


class CrawlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seeds: list[str] = Field(default_factory=list, description="start URLs, or builtin:pydoc")
    allowed_domains: list[str] = Field(default_factory=list, description="empty: the seeds' hosts")
    max_pages: int = Field(1000, ge=1)
    max_depth: int = Field(5, ge=0)
    max_bytes: int = Field(5_000_000, ge=1024, description="larger bodies are cut off (WARC-Truncated)")
    requests_per_second_per_host: float = Field(2.0, gt=0)
    concurrency: int = Field(8, ge=1)
    per_host_concurrency: int = Field(2, ge=1)
    timeout_s: float = Field(20.0, gt=0, description="for each read of a response: connect, headers, each chunk")
    deadline_s: float = Field(60.0, gt=0, description="for a whole request, headers and body: a server that drips bytes ends here")
    max_redirects: int = Field(5, ge=0)
    max_retries: int = Field(3, ge=0)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    user_agent: str = "llmill/0.1 (+https://github.com/llmill/llmill)"
    allow_private_addresses: bool = Field(
        False, description="allow loopback, private and link-local addresses (cloud metadata too)"
    )
    warc_file_bytes: int = Field(64_000_000, ge=1_000_000)
    pydoc_port: int = Field(0, ge=0, le=65535, description="port builtin:pydoc listens on (its URLs never show it); 0 picks a free one")


# ---------------------------------------------------------------- crawl state on disk


class StorageFailed(Exception):
    """Writing the journal or a WARC file failed (disk full, ...): the crawl ends with it, since
    going on would fetch pages it cannot keep or record."""


class Journal:
    """Append-only JSON lines: `seen` when a URL enters the frontier, `done` when settled. A line
    torn by a kill is cut before anything is appended (formats/jsonl.py)."""

    def __init__(self, path: Path):
        self.path = path
        cut_torn_tail(path)
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, **event) -> None:
        try:
            self.fh.write(json.dumps(event, separators=(",", ":")) + "\n")
            self.fh.flush()
        except OSError as e:
            raise StorageFailed(f"writing the crawl journal {self.path}: {e}") from e

    def close(self) -> None:
        try:
            self.fh.close()
        except OSError:  # what the failed write left in the buffer: the next open cuts its torn line
            pass

    @staticmethod
    def read(path: Path) -> list[dict]:
        cut_torn_tail(path)
        return read_records(path)


def torn_at(path: Path, offset: int) -> bool:
    """Whether the bytes of `path` from `offset` are one gzip member cut short (what a kill
    leaves: each WARC record is a member of its own), rather than damage followed by more."""
    inflate = zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 20):
            try:
                inflate.decompress(chunk, 1 << 20)
                while inflate.unconsumed_tail:
                    inflate.decompress(inflate.unconsumed_tail, 1 << 20)
            except zlib.error:
                return False
            if inflate.eof:
                return False  # a whole member that warcio could not read: damage, not a tear
    return True


def stored_urls(warc_dir: Path) -> set[str]:
    """URLs of complete response records. A torn record at a file's end is cut off; any other
    damage, and any read error, fails here with the file named, and nothing is cut."""
    urls: set[str] = set()
    for path in sorted(warc_dir.glob("*.warc.gz")):
        good_end = 0
        try:
            with open(path, "rb") as f:
                it = ArchiveIterator(f)
                for record in it:
                    url = record.rec_headers.get_header("WARC-Target-URI") if record.rec_type == "response" else None
                    record.content_stream().read()
                    it.read_to_end()
                    good_end = it.get_record_offset() + it.get_record_length()
                    if url:
                        urls.add(url)
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - warcio and zlib raise many kinds on bad bytes
            if not torn_at(path, good_end):
                raise StorageFailed(f"{path}: damaged at byte {good_end} ({type(e).__name__}: {e}), not torn at its end; "
                                    "move the file aside to resume without it") from e
        if good_end < path.stat().st_size:
            if not torn_at(path, good_end):
                raise StorageFailed(f"{path}: unreadable bytes from {good_end} that are not a torn last record")
            with open(path, "r+b") as f:
                f.truncate(good_end)
    return urls


class WarcSink:
    """Request and response records into rolling WARC.gz files."""

    def __init__(self, directory: Path, max_bytes: int):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        existing = sorted(self.dir.glob("crawl-*.warc.gz"))
        self.index = int(existing[-1].name[6:11]) + 1 if existing else 0
        self.fh = None

    def _open(self) -> None:
        self.path = self.dir / f"crawl-{self.index:05d}.warc.gz"
        self.fh = open(self.path, "ab")
        self.writer = WARCWriter(self.fh, gzip=True)
        self.index += 1

    def write(self, page: "Page") -> str:
        if self.fh is None:
            self._open()
        req_headers = StatusAndHeaders(
            f"GET {page.path_query} HTTP/1.1", page.request_headers, is_http_request=True
        )
        request = self.writer.create_warc_record(page.url, "request", http_headers=req_headers)
        skip = {"content-encoding", "transfer-encoding", "content-length"}
        resp_headers = StatusAndHeaders(
            f"{page.status} {page.reason}",
            [(k, v) for k, v in page.headers if k.lower() not in skip]
            + [("Content-Length", str(len(page.body)))],
            protocol="HTTP/1.1",
        )
        extra = {"WARC-Truncated": "length"} if page.truncated else None
        response = self.writer.create_warc_record(
            page.url,
            "response",
            payload=io.BytesIO(page.body),
            length=len(page.body),
            http_headers=resp_headers,
            warc_headers_dict=extra,
        )
        request.rec_headers.add_header("WARC-Concurrent-To", response.rec_headers.get_header("WARC-Record-ID"))
        try:
            self.writer.write_record(response)
            self.writer.write_record(request)
            self.fh.flush()
        except OSError as e:
            raise StorageFailed(f"writing {self.path}: {e}") from e
        name = self.path.name
        if self.fh.tell() >= self.max_bytes:
            self.close()
        return name

    def close(self) -> None:
        if self.fh is not None:
            fh, self.fh = self.fh, None
            try:
                fh.close()
            except OSError:  # after a failed write: a resume cuts the torn record
                pass


# ---------------------------------------------------------------- fetching


@dataclass
class Page:
    url: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    request_headers: list[tuple[str, str]]
    body: bytes
    truncated: bool
    path_query: str


@dataclass
class Outcome:
    kind: Literal["page", "redirect", "skipped", "failed", "not_modified"]
    reason: str = ""
    page: Page | None = None
    location: str | None = None
    status: int | None = None


@dataclass
class Visit:
    """What fetching a frontier URL found: the redirect chain and the last outcome, or how to
    settle the URL without a page (outcome, reason)."""

    chain: list[str]
    outcome: Outcome | None = None
    settle: tuple[str, str] | None = None


@dataclass
class Host:
    robots: Protego | None = None
    robots_ready: asyncio.Event = field(default_factory=asyncio.Event)
    robots_started: bool = False
    interval: float = 0.0
    next_start: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    slots: asyncio.Semaphore | None = None
    refusal: str | None = None  # the address rule refused the host itself


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff_delay(attempt: int, cfg: CrawlConfig, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After wins when it asks for more."""
    delay = random.uniform(0.5, 1.0) * min(cfg.backoff_max_s, cfg.backoff_base_s * 2**attempt)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cfg.backoff_max_s))
    return delay


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
        self.hosts: dict[str, Host] = {}
        self.stats: Counter = Counter()
        state = out / "state"
        state.mkdir(parents=True, exist_ok=True)
        self.robots_file = state / "robots.json"
        self.robots_cache: dict[str, str | None] = (
            json.loads(self.robots_file.read_text()) if self.robots_file.exists() else {}
        )
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

    # -- per-host politeness

    def host(self, url: str) -> Host:
        origin = origin_of(url)
        if origin not in self.hosts:
            self.hosts[origin] = Host(
                interval=1.0 / self.cfg.requests_per_second_per_host,
                slots=asyncio.Semaphore(self.cfg.per_host_concurrency),
            )
        return self.hosts[origin]

    async def wait_turn(self, host: Host) -> None:
        async with host.lock:
            now = time.monotonic()
            if host.next_start > now:
                await asyncio.sleep(host.next_start - now)
            host.next_start = time.monotonic() + host.interval

    async def robots_for(self, client: httpx.AsyncClient, url: str) -> Protego | None:
        """Fetched once per host; 4xx means no rules, 5xx or unreachable means keep out (RFC 9309)."""
        origin = origin_of(url)
        host = self.host(url)
        if host.robots_started:
            await host.robots_ready.wait()
            return host.robots
        host.robots_started = True
        if origin in self.robots_cache:
            text = self.robots_cache[origin]
        else:
            text = None
            try:
                async with asyncio.timeout(self.cfg.deadline_s):
                    text = await self.fetch_robots(client, origin)
                self.stats["robots_fetched"] += 1
            except AddressRefused as e:
                host.refusal = e.reason  # the host itself: its pages are refused too, nothing cached
            except (httpx.HTTPError, UnsupportedEncoding, BodyDecodingError, TimeoutError):
                text = DISALLOW_ALL
            if host.refusal is None:
                self.robots_cache[origin] = text
                self.robots_file.write_text(json.dumps(self.robots_cache))
        if text is not None:
            host.robots = Protego.parse(text)
            delay = host.robots.crawl_delay(self.cfg.user_agent)
            if delay:
                host.interval = max(host.interval, float(delay))
        host.robots_ready.set()
        return host.robots

    async def fetch_robots(self, client: httpx.AsyncClient, origin: str) -> str | None:
        """robots.txt with up to 5 redirects (RFC 9309), each hop a connection of its own under the
        address rule. A hop to a refused address keeps the crawler out of the whole host; only
        the first hop's refusal is the host's own (AddressRefused propagates)."""
        url = origin + "/robots.txt"
        for hop in range(6):
            try:
                async with client.stream("GET", url, timeout=self.cfg.timeout_s) as r:
                    if r.status_code >= 500:
                        return DISALLOW_ALL
                    if 300 <= r.status_code < 400:
                        url = normalize_url(r.headers.get("location") or "", url)
                        if url is None:
                            return None  # a redirect off http(s): as an unavailable robots.txt
                        continue
                    if r.status_code >= 400:
                        return None
                    decoded = BoundedBody(r.headers.get("content-encoding"), ROBOTS_MAX_BYTES)  # past the cap: ignored, as Google does
                    body = bytearray()
                    async for chunk in r.aiter_raw():
                        body += decoded.feed(chunk)
                        if decoded.full:
                            break
                    return body.decode(r.encoding or "utf-8", "replace")
            except AddressRefused:
                if hop == 0:
                    raise
                self.stats["robots_redirect_refused"] += 1
                return DISALLOW_ALL
        return None  # past 5 redirects: as unavailable (RFC 9309)

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

    async def fetch(self, client: httpx.AsyncClient, url: str) -> Outcome:
        cfg = self.cfg
        host = self.host(url)
        last = "failed"
        conditional = self.validators(url)
        for attempt in range(cfg.max_retries + 1):
            retry_after = None
            async with host.slots:
                await self.wait_turn(host)
                self.stats["requests"] += 1
                self.stats["conditional_requests"] += bool(conditional)
                try:
                    async with asyncio.timeout(cfg.deadline_s), client.stream("GET", url, timeout=cfg.timeout_s, headers=conditional) as r:
                        status = r.status_code
                        if status == 429 or status >= 500:
                            retry_after = retry_after_seconds(r.headers.get("retry-after"))
                            last = f"http_{status}"
                        elif 300 <= status < 400 and r.headers.get("location"):
                            return Outcome("redirect", location=r.headers["location"], status=status)
                        elif status == 304:
                            return Outcome("not_modified", status=status)
                        elif status != 200:
                            return Outcome("failed", reason=f"http_{status}", status=status)
                        else:
                            ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
                            if ctype and ctype not in HTML_TYPES:
                                return Outcome("skipped", reason="non_html", status=status)
                            declared = int(r.headers.get("content-length") or 0)
                            if declared > cfg.max_bytes:
                                return Outcome("skipped", reason="too_large", status=status)
                            try:
                                decoded = BoundedBody(r.headers.get("content-encoding"), cfg.max_bytes)
                            except UnsupportedEncoding as e:
                                return Outcome("skipped", reason=f"unsupported_encoding: {e}", status=status)
                            body = bytearray()
                            try:
                                async for chunk in r.aiter_raw():
                                    body += decoded.feed(chunk)
                                    if decoded.full:
                                        break
                            except BodyDecodingError as e:
                                return Outcome("failed", reason=f"decoding_error: {e}", status=status)
                            truncated = decoded.full
                            req = r.request
                            page = Page(
                                url=url,
                                status=status,
                                reason=r.reason_phrase or "OK",
                                headers=list(r.headers.multi_items()),
                                request_headers=list(req.headers.multi_items()),
                                body=bytes(body),
                                truncated=truncated,
                                path_query=req.url.raw_path.decode("ascii", "replace"),
                            )
                            return Outcome("page", page=page, status=status)
                except AddressRefused as e:
                    return Outcome("skipped", reason=e.reason)
                except (httpx.TransportError, httpx.TimeoutException) as e:
                    last = f"network_error: {type(e).__name__}"
                except TimeoutError:
                    last = f"deadline_exceeded: over {cfg.deadline_s:g}s"
            if attempt < cfg.max_retries:
                self.stats["retries"] += 1
                await asyncio.sleep(backoff_delay(attempt, cfg, retry_after))
        return Outcome("failed", reason=last)

    async def fetch_chain(self, client: httpx.AsyncClient, url: str) -> Visit:
        """The network half of a visit: robots, the fetch and its redirects. It reads no crawl
        state that other visits change, so visits can run at once and still be decided alike."""
        chain = [url]
        current = url
        while True:
            if not in_allowed_domains(current, self.allowed):
                return Visit(chain, settle=("skipped", "outside_allowed_domains"))
            robots = await self.robots_for(client, current)
            refusal = self.host(current).refusal
            if refusal:
                return Visit(chain, settle=("skipped", refusal))
            if robots is not None and not robots.can_fetch(current, self.cfg.user_agent):
                return Visit(chain, settle=("skipped", "robots_disallowed"))
            outcome = await self.fetch(client, current)
            if outcome.kind != "redirect":
                return Visit(chain, outcome=outcome)
            target = normalize_url(outcome.location or "", current)
            if target is None:
                return Visit(chain, settle=("skipped", "redirect_to_non_http"))
            if target in chain or len(chain) > self.cfg.max_redirects:
                return Visit(chain, settle=("failed", "redirect_loop" if target in chain else "too_many_redirects"))
            chain.append(target)
            current = target

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
                            window.append((url, depth, asyncio.create_task(self.fetch_chain(client, url))))
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


def crawl(inputs: list[str], cfg: CrawlConfig, out: Path, progress: Progress = no_progress) -> dict:
    """Crawl from the config's seeds into `out` (warc/, state.json); resumes a partial `out`."""
    if inputs:
        raise ValueError("crawl takes no input datasets")
    if not cfg.seeds:
        raise ValueError("crawl.seeds is empty: give at least one URL or builtin:pydoc")
    with _served_seeds(cfg, out) as served:
        return run_to_end(Crawler(cfg, served.seeds, out, progress, served=served.served))


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


class _served_seeds:
    """Start the pydoc server for builtin:pydoc while the crawl runs. Its pages are crawled under
    the fixed name pydoc_site.BASE, whatever port the server got, so a rerun, a resumed crawl
    and a refresh all see the same URLs."""

    def __init__(self, cfg: CrawlConfig, out: Path):
        self.cfg = cfg
        self.ctx = None
        self.seeds: list[str] = list(cfg.seeds)
        self.served: dict[str, str] = {}  # fixed origin -> the origin the server listens on

    def __enter__(self) -> "_served_seeds":
        if PYDOC_SEED in self.seeds:
            self.ctx = serve_pydoc(self.cfg.pydoc_port)
            base = self.ctx.__enter__()
            self.served = {origin_of(PYDOC_BASE): origin_of(base)}
            self.seeds = [PYDOC_BASE if s == PYDOC_SEED else s for s in self.seeds]
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


@task(name="crawl", cache_policy=STAGE_CACHE, persist_result=True, retries=2, retry_delay_seconds=[10, 60], retry_jitter_factor=0.5)
def crawl_task(inputs: list[str], cfg: CrawlConfig, root: str) -> str:
    return prefect_stage("crawl", VERSION, crawl, inputs, cfg, root, resumable=True)
