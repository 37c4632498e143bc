"""Decompression bombs and slow servers: a page, a robots.txt and a WARC record that decode to
hundreds of MiB are cut at their limits inside a process whose address space is capped
(RLIMIT_AS: what it had after its imports plus 192 MiB), and a server that drips its body is
cut off by the request deadline. Each case is bounded in time and stops by itself."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from tasks.crawl import CrawlConfig, crawl
from tests.helpers import Site, html, outcomes, python_doc_pages, stored, write_warc

ROOT = Path(__file__).resolve().parents[2]
CAPPED_ENV = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # a new thread's malloc arena would reserve 64 MiB of address space
HEADROOM = 192 << 20  # what a bomb's decoded bytes (256 MiB) cannot fit in; what a bounded read (100 KB) easily does


def cap_address_space() -> int:
    """Cap this process's address space at what it maps now plus HEADROOM; returns the cap."""
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM, resource.RLIM_INFINITY))
    return vm + HEADROOM


CRAWL_AND_REPORT_MEMORY = """
import json, resource, sys
from tasks.crawl import CrawlConfig, crawl
from tests.faults.test_bombs import cap_address_space
cap_address_space()
cfg = CrawlConfig(seeds=[sys.argv[1]], allow_private_addresses=True, requests_per_second_per_host=1000, max_bytes=100_000,
                  timeout_s=60, max_retries=0)
from pathlib import Path
stats = crawl({}, cfg, Path(sys.argv[2]))
print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "pages": stats["pages"]}))
"""


def test_compression_bombs_in_pages_and_robots_txt_are_cut_at_max_bytes_without_the_memory(tmp_path):
    import gzip

    import brotli

    zeros = b"\0" * (256 << 20)
    br, gzgz = brotli.compress(zeros, quality=1), gzip.compress(gzip.compress(zeros, 1))
    del zeros
    page = html("home", ["/br", "/gzgz"])[2]
    bombs = {"/robots.txt": (200, {"Content-Type": "text/plain", "Content-Encoding": "br"}, br),
             "/": (200, {"Content-Type": "text/html"}, page),
             "/br": (200, {"Content-Type": "text/html", "Content-Encoding": "br"}, br),
             "/gzgz": (200, {"Content-Type": "text/html", "Content-Encoding": "gzip, gzip"}, gzgz)}
    plain = {"/": (200, {"Content-Type": "text/html"}, page), "/br": html("br"), "/gzgz": html("gzgz")}
    runs = {}
    for name, routes in (("plain", plain), ("bombs", bombs)):
        with Site(routes) as site:
            proc = subprocess.run([sys.executable, "-c", CRAWL_AND_REPORT_MEMORY, site.url + "/", str(tmp_path / name)], cwd=ROOT, env=CAPPED_ENV,
                                  capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs["bombs"]["pages"] == runs["plain"]["pages"] == 3
    # 256 MiB decoded per bomb before; now each body stops at max_bytes
    assert runs["bombs"]["maxrss_mb"] - runs["plain"]["maxrss_mb"] < 64, runs
    records = stored(tmp_path / "bombs")
    for path in ("/br", "/gzgz"):
        record = records[f"{site.url}{path}"]
        assert record["body"] == b"\0" * 100_000 and record["truncated"] == "length"
    (robots,) = (tmp_path / "bombs").rglob("robots.json")
    assert [len(text.encode()) for text in json.loads(robots.read_text()).values()] == [500 * 1024]  # of 256 MiB


def test_a_server_that_drips_its_body_is_cut_off_by_the_request_deadline(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Drip(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path == "/robots.txt":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(150):  # one byte every 0.2 s: each read is quick, the whole takes 30 s
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        started = time.monotonic()
        stats = crawl({}, CrawlConfig(seeds=[url], allow_private_addresses=True, timeout_s=1, deadline_s=1.5, max_retries=0), tmp_path)
        took = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert stats["pages"] == 0
    assert outcomes(tmp_path)[url.rstrip("/")]["reason"] == "deadline_exceeded: over 1.5s"
    assert took < 15, took


EXTRACT_UNDER_CAP = """
import json, sys
from tasks.extract import ExtractConfig, extract_warc
from tests.faults.test_bombs import cap_address_space
cap_address_space()
docs, quarantine, _ = extract_warc(sys.argv[1], ExtractConfig(max_html_bytes=1_000_000))
print(json.dumps({"docs": [d["url"] for d in docs], "quarantine": {q["url"]: q["reason"] for q in quarantine}}))
"""


def test_a_warc_record_bomb_is_cut_at_max_html_bytes_under_a_memory_cap(tmp_path):
    import brotli

    (url, page, ctype), = python_doc_pages(1)
    bomb = brotli.compress(b"\0" * (512 << 20), quality=1)  # 512 MiB decoded, far past the cap
    warc = write_warc(tmp_path / "bomb.warc.gz", [("http://enc.test/bomb", bomb, "text/html", {"Content-Encoding": "br"}),
                                                  (url, page, ctype)])
    proc = subprocess.run([sys.executable, "-c", EXTRACT_UNDER_CAP, str(warc)], cwd=ROOT, env=CAPPED_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]  # before: MemoryError, or the whole 512 MiB held at once
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["docs"] == [url]
    assert result["quarantine"]["http://enc.test/bomb"].startswith("too_large: over 1000000 bytes decoded")
