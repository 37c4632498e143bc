"""A crawl against a server that fails about 30 % of page requests, with a 503, a connection reset
or a response slower than the client's timeout: every page is stored exactly once, none lost.
The failures are drawn from a seeded generator, at most three in a row for one page, so the
crawler's retries (four) always get through and the test cannot flake."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from warcio.archiveiterator import ArchiveIterator

from tasks.crawl import CrawlConfig, crawl
from tests.helpers import html, outcomes

PAGES = 40


class FlakyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, seed: int):
        self.rng, self.lock = random.Random(seed), threading.Lock()
        self.failed_in_a_row: Counter = Counter()
        self.failures: Counter = Counter()
        self.served: Counter = Counter()
        super().__init__(("127.0.0.1", 0), FlakyHandler)

    def handle_error(self, request, client_address):  # a reset connection is the point, not news
        pass

    def draw(self, path: str) -> str:
        with self.lock:
            if path == "/robots.txt" or self.failed_in_a_row[path] >= 3 or self.rng.random() >= 0.3:
                self.failed_in_a_row[path] = 0
                return "ok"
            self.failed_in_a_row[path] += 1
            kind = self.rng.choice(["503", "reset", "slow"])
            self.failures[kind] += 1
            return kind


class FlakyHandler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        server: FlakyServer = self.server  # type: ignore[assignment]
        kind = server.draw(self.path)
        if kind == "reset":
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
            self.request.close()
            return
        if kind == "slow":
            time.sleep(1.5)  # past the client's 1 s read timeout
        if self.path == "/robots.txt":
            status, headers, body = 200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n"
        elif kind == "503":
            status, headers, body = 503, {"Content-Type": "text/html"}, b"busy"
        elif self.path == "/":
            status, headers, body = html("home", [f"/p{i}" for i in range(PAGES)])
        elif self.path.startswith("/p") and self.path[2:].isdigit() and int(self.path[2:]) < PAGES:
            status, headers, body = html(f"page {self.path[2:]}", ["/"])
        else:
            status, headers, body = 404, {"Content-Type": "text/html"}, b"no"
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up on a slow answer
            return
        if status == 200:
            with server.lock:
                server.served[self.path] += 1


def test_every_page_is_stored_exactly_once_from_a_server_that_fails_30_percent(tmp_path):
    server = FlakyServer(seed=15)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        stats = crawl({}, CrawlConfig(seeds=[url + "/"], allow_private_addresses=True, requests_per_second_per_host=1000,
                                      per_host_concurrency=4, concurrency=4, timeout_s=1, deadline_s=3, max_retries=4,
                                      backoff_base_s=0.01, backoff_max_s=0.05), tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert min(server.failures[k] for k in ("503", "reset", "slow")) >= 1, server.failures  # each fault happened
    stored: Counter = Counter()
    for path in (tmp_path / "warc").glob("*.warc.gz"):
        with open(path, "rb") as f:
            for record in ArchiveIterator(f):
                if record.rec_type == "response":
                    stored[record.rec_headers.get_header("WARC-Target-URI")] += 1
    expected = {url} | {f"{url}/p{i}" for i in range(PAGES)}
    assert set(stored) == expected and set(stored.values()) == {1}  # all of them, each once
    assert stats["pages"] == PAGES + 1 and stats["retries"] >= sum(server.failures.values()) - 1
    assert all(outcomes(tmp_path)[u]["outcome"] == "page" for u in expected)
