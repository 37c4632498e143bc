"""Politeness per host: robots.txt (disallow, crawl-delay; fetched once per host, cached in the
crawl's state), a request interval and a concurrency cap, and backoff with jitter that honours
Retry-After. The address rule (no private, loopback or link-local addresses) is enforced on
every connection by tasks/net_guard.py; a host it refuses is remembered here."""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from protego import Protego

from tasks.crawl.crawl_config import CrawlConfig
from tasks.http_body import BodyDecodingError, BoundedBody, UnsupportedEncoding
from tasks.net_guard import AddressRefused
from tasks.urls import normalize_url, origin_of

ROBOTS_MAX_BYTES = 500 * 1024  # of a robots.txt, what Google reads and what is stored
DISALLOW_ALL = "User-agent: *\nDisallow: /\n"  # robots.txt unreachable or 5xx: keep out (RFC 9309)


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


class Politeness:
    """The crawl's hosts: their robots rules, request intervals and slots. `robots_file` caches
    each origin's robots.txt, so a resumed crawl does not fetch it again."""

    def __init__(self, cfg: CrawlConfig, robots_file: Path, stats: Counter):
        self.cfg = cfg
        self.stats = stats
        self.hosts: dict[str, Host] = {}
        self.robots_file = robots_file
        self.robots_cache: dict[str, str | None] = json.loads(robots_file.read_text()) if robots_file.exists() else {}

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
