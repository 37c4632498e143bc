"""Fetching: one page with retries and bounded bodies (an Outcome), and a visit: robots, the
fetch and its redirects (a Visit). Nothing here changes the crawl's state, so visits run at
once and the crawler commits their results in frontier order."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Literal

import httpx

from tasks.crawl.crawl_config import CrawlConfig
from tasks.crawl.politeness import Politeness, backoff_delay, retry_after_seconds
from tasks.crawl.warc_sink import Page
from tasks.http_body import BodyDecodingError, BoundedBody, UnsupportedEncoding
from tasks.net_guard import AddressRefused
from tasks.urls import in_allowed_domains, normalize_url

HTML_TYPES = ("text/html", "application/xhtml+xml")


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


class Fetcher:
    """`validators(url)`: the conditional-request headers for a page an earlier crawl stored."""

    def __init__(self, cfg: CrawlConfig, politeness: Politeness, allowed: list[str], validators: Callable[[str], dict[str, str]],
                 stats: Counter):
        self.cfg = cfg
        self.politeness = politeness
        self.allowed = allowed
        self.validators = validators
        self.stats = stats

    async def fetch(self, client: httpx.AsyncClient, url: str) -> Outcome:
        cfg = self.cfg
        host = self.politeness.host(url)
        last = "failed"
        conditional = self.validators(url)
        for attempt in range(cfg.max_retries + 1):
            retry_after = None
            async with host.slots:
                await self.politeness.wait_turn(host)
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

    async def chain(self, client: httpx.AsyncClient, url: str) -> Visit:
        """The network half of a visit: robots, the fetch and its redirects. It reads no crawl
        state that other visits change, so visits can run at once and still be decided alike."""
        chain = [url]
        current = url
        while True:
            if not in_allowed_domains(current, self.allowed):
                return Visit(chain, settle=("skipped", "outside_allowed_domains"))
            robots = await self.politeness.robots_for(client, current)
            refusal = self.politeness.host(current).refusal
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
