"""crawl: a polite async web crawler that writes WARC.gz files.

Politeness: robots.txt (disallow, crawl-delay) fetched once per host, a per-host request
interval and concurrency cap, bounded redirects, bounded bodies. Safety: private, loopback
and link-local addresses are refused unless the config allows them, on every connection the
client opens (tasks/net_guard.py): pages, redirect hops and robots.txt alike.

Resumability: the crawl keeps an append-only journal beside its WARC files. A crawl killed
mid-way restarts from the journal and the WARC files (the WARC is the truth for what was
stored; a torn last record is cut off), so no stored page is fetched twice.

The parts: crawl_config.py, state.py (journal, stored URLs), warc_sink.py, politeness.py (hosts,
robots, backoff), fetch.py (a page, a visit), crawler.py (frontier, commit order, state.json,
run_crawler: what crawl and recrawl both run).
"""

from __future__ import annotations

from pathlib import Path

from tasks.crawl.crawl_config import CrawlConfig
from tasks.crawl.crawler import run_crawler
from tasks.orchestration import stage_task
from tasks.stage import Progress, no_progress

__all__ = ["VERSION", "CrawlConfig", "crawl", "crawl_task"]

VERSION = 2  # 2: builtin:pydoc under a fixed name


def crawl(inputs: dict, cfg: CrawlConfig, out: Path, progress: Progress = no_progress) -> dict:
    """Crawl from the config's seeds into `out` (warc/, state.json); resumes a partial `out`."""
    if inputs:
        raise ValueError("crawl takes no input datasets")
    if not cfg.seeds:
        raise ValueError("crawl.seeds is empty: give at least one URL or builtin:pydoc")
    stats, _ = run_crawler(cfg, out, progress)
    return stats


crawl_task = stage_task(crawl, resumable=True, retries=2, retry_delay_seconds=[10, 60], retry_jitter_factor=0.5)
