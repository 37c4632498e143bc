"""The crawler under faults that lose work or hang: a full disk, a torn journal line, a damaged
WARC file. Each case is bounded in time and stops by itself."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from formats.jsonl import read_records
from tasks.crawl import CrawlConfig, crawl
from tasks.crawl.state import Journal, StorageFailed, stored_urls
from tasks.crawl.warc_sink import WarcSink
from tests.helpers import Site, html

ROOT = Path(__file__).resolve().parents[2]


def site_routes(n: int) -> dict:
    """A home page linking n pages of about 3 KB each."""
    routes = {"/": html("home", [f"/p{i}" for i in range(n)])}
    routes |= {f"/p{i}": html(f"page {i} " + "words of text " * 200) for i in range(n)}
    return routes


FULL_DISK = """
import resource, sys
from pathlib import Path
from tasks.crawl import CrawlConfig, crawl
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # a file past the limit fails to grow: EFBIG, as a full disk does
crawl({}, CrawlConfig(seeds=[sys.argv[1]], allow_private_addresses=True, requests_per_second_per_host=1000, max_pages=60,
                      concurrency=4, per_host_concurrency=4), Path(sys.argv[2]))
"""


@pytest.mark.parametrize("fills", ["warc", "journal"])
def test_a_full_disk_ends_the_crawl_promptly_with_the_error(tmp_path, fills):
    if fills == "warc":  # 3 KB pages: a WARC file reaches the limit first
        routes, limit = site_routes(60), 40_000
    else:  # a home page linking 400 URLs: its `seen` events fill the journal first
        routes, limit = {"/": html("home", [f"/p{i}" for i in range(400)])} | {f"/p{i}": html(f"p{i}") for i in range(400)}, 20_000
    with Site(routes) as site:
        # before: a failed WARC write marked each page failed and the crawl went on (silent loss); a failed
        # journal write killed each worker in its error handler and queue.join() waited forever
        proc = subprocess.run([sys.executable, "-c", FULL_DISK, site.url + "/", str(tmp_path / "out"), str(limit)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "StorageFailed" in proc.stderr and "File too large" in proc.stderr, proc.stderr[-2000:]
    assert f"writing {'the crawl journal' if fills == 'journal' else tmp_path}" in proc.stderr, proc.stderr[-2000:]


def test_a_torn_journal_line_loses_nothing_across_two_resumes(tmp_path):
    def config(pages: int) -> CrawlConfig:
        return CrawlConfig(seeds=[site.url + "/"], allow_private_addresses=True, requests_per_second_per_host=1000,
                           max_pages=pages, concurrency=1)

    journal = tmp_path / "state" / "journal.jsonl"
    with Site(site_routes(12)) as site:
        crawl({}, config(4), tmp_path)
        with open(journal, "a") as f:
            f.write('{"e":"done","url":"http://torn')  # a kill mid-line
        crawl({}, config(8), tmp_path)  # before: appended to the torn line, gluing its first event to it
        crawl({}, config(12), tmp_path)  # before: read up to the glued line only, losing the second run's events
        assert max(site.hits.values()) == 1  # no page fetched twice
    events = read_records(journal)  # every line parses: nothing to read past
    assert sum(1 for e in events if e["e"] == "done" and e["outcome"] == "page") == 12
    assert Journal.read(journal) == events


def test_a_torn_last_warc_record_is_cut_and_damage_elsewhere_is_refused(tmp_path):
    from tasks.crawl.warc_sink import Page

    sink = WarcSink(tmp_path / "warc", 10**9)
    for i in range(3):
        sink.write(Page(url=f"http://site.test/{i}", status=200, reason="OK", headers=[("Content-Type", "text/html")],
                        request_headers=[], body=f"<p>page {i}</p>".encode() * 50, truncated=False, path_query=f"/{i}"))
    sink.close()
    (warc,) = (tmp_path / "warc").glob("*.warc.gz")
    whole = warc.read_bytes()
    member = gzip.compress(b"WARC/1.0\r\nWARC-Type: response\r\n" + b"x" * 5000)
    warc.write_bytes(whole + member[: len(member) // 2])  # a kill mid-record
    assert stored_urls(tmp_path / "warc") == {f"http://site.test/{i}" for i in range(3)}
    assert warc.read_bytes() == whole  # the torn record is cut, the others kept

    damaged = bytearray(whole)
    middle = len(whole) // 2
    damaged[middle : middle + 64] = b"\0" * 64  # damage inside a record that has others after it
    warc.write_bytes(bytes(damaged))
    with pytest.raises(StorageFailed, match="not torn at its end"):
        stored_urls(tmp_path / "warc")
    assert warc.read_bytes() == bytes(damaged)  # before: cut at the damage, destroying the stored pages after it
