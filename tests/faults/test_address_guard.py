"""The address rule holds for the connection actually made: a robots.txt redirect to an internal
address, a DNS answer that changes between check and connect (rebinding), and a host name the
check and the client would spell differently (IDNA 2003 against 2008) reach no internal server.

The names are answered by a resolver stand-in (socket.getaddrinfo, patched for names under
`.test`, which no real resolver answers); the servers, the client and the guard are real."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from tasks.crawl import CrawlConfig
from tasks.crawl.crawler import Crawler
from tests.helpers import Site, html

PUBLIC = "93.184.215.14"  # a global address; nothing answers it from here


def crawl_with(seeds: list[str], out: Path, trusted: tuple[str, ...] = (), **kw) -> dict:
    cfg = CrawlConfig(seeds=seeds, allow_private_addresses=False, requests_per_second_per_host=1000, max_retries=1,
                      backoff_base_s=0.01, timeout_s=1, deadline_s=3, **kw)
    crawler = Crawler(cfg, cfg.seeds, out, lambda *a: None, trusted_origins=trusted)
    try:
        asyncio.run(crawler.run())
    finally:
        crawler.close()
    return json.loads((out / "state.json").read_text())["urls"]


@pytest.fixture
def answers(monkeypatch):
    """{name: [address per lookup, the last one repeated]}: what the stand-in resolver says."""
    table: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not name.endswith(".test"):
            return real(host, port, family, type, proto, flags)
        getaddrinfo.asked.append(name)
        seq = table.get(name)
        if not seq:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        address = seq.pop(0) if len(seq) > 1 else seq[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]

    getaddrinfo.asked = []
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table, getaddrinfo.asked


def test_a_robots_redirect_to_an_internal_address_is_not_followed(tmp_path):
    with Site({"/robots.txt": html("internal secret robots")}) as internal, \
            Site({"/robots.txt": (302, {"Location": internal.url + "/robots.txt"}, b""), "/": html("home")}) as site:
        states = crawl_with([site.url + "/"], tmp_path, trusted=(site.url,))  # the site is trusted, the internal server is not
    assert internal.log == []  # before: fetched through the redirect, its body stored as the site's robots.txt
    assert "internal secret" not in (tmp_path / "state" / "robots.json").read_text()
    assert states[site.url]["reason"] == "robots_disallowed"  # a refused robots.txt keeps the crawler out


def test_a_name_that_rebinds_to_an_internal_address_after_the_check_is_not_fetched(tmp_path, answers):
    answers, _ = answers
    with Site({"/": html("internal secret page"), "/robots.txt": html("")}) as internal:
        answers["rebind.test"] = [PUBLIC, "127.0.0.1"]  # public when checked, internal from the next lookup on
        states = crawl_with([f"http://rebind.test:{internal.port}/"], tmp_path)
    assert internal.log == []  # before: the guard saw the public answer, httpx connected to the internal one
    (url,) = states
    assert states[url]["outcome"] != "page"
    assert not list((tmp_path / "warc").glob("*.warc.gz")) or b"internal secret" not in b"".join(
        p.read_bytes() for p in (tmp_path / "warc").glob("*.warc.gz"))


def test_an_internationalised_name_is_checked_under_the_spelling_that_is_connected_to(tmp_path, answers):
    answers, asked = answers
    with Site({"/": html("internal secret page"), "/robots.txt": html("")}) as internal:
        # IDNA 2003 (Python's resolver) maps ß to ss; IDNA 2008 (httpx) keeps it as xn--strae-oqa
        answers["straße.test"] = answers["strasse.test"] = [PUBLIC]
        answers["xn--strae-oqa.test"] = ["127.0.0.1"]
        states = crawl_with([f"http://straße.test:{internal.port}/"], tmp_path)
    assert internal.log == []
    (url,) = states
    assert states[url]["outcome"] == "skipped" and states[url]["reason"].startswith("private_address: xn--strae-oqa.test"), states
    assert "xn--strae-oqa.test" in asked  # the name resolved is the one connected to


def test_a_redirect_to_an_internal_address_is_refused_at_the_hop(tmp_path):
    with Site({"/": html("internal secret page"), "/robots.txt": html("")}) as internal, \
            Site({"/": (302, {"Location": internal.url + "/"}, b""), "/robots.txt": (404, {}, b"")}) as site:
        states = crawl_with([site.url + "/"], tmp_path, trusted=(site.url,))
    assert internal.log == []
    assert states[site.url]["outcome"] == "skipped" and states[site.url]["reason"].startswith("private_address: 127.0.0.1")


def test_an_ingest_source_that_rebinds_is_refused_at_the_connection(tmp_path, answers):
    """ingest checks an http(s) source's name when it lists it; the read that follows resolves
    again (aiohttp, under fsspec) and is checked again, so a rebinding answer reads nothing."""
    from tasks.ingest import IngestConfig, describe_sources
    from tests.helpers import python_doc_pages, range_server, write_warc

    answers, _ = answers
    docs = tmp_path / "docs"
    docs.mkdir()
    write_warc(docs / "a.warc.gz", python_doc_pages(1))
    with range_server(docs) as (base, log):
        port = base.rsplit(":", 1)[1]
        answers["rebind.test"] = [PUBLIC, PUBLIC, "127.0.0.1"]  # public while ingest checks it (twice), internal when read
        with pytest.raises(ValueError, match=r"refused \(private_address: rebind.test resolves to 127.0.0.1\)"):
            describe_sources(IngestConfig(paths=[f"http://rebind.test:{port}/a.warc.gz"]))
        assert log == []  # before: its size and ETag read from the internal server, then its bytes


def test_https_goes_through_the_guard_with_the_certificate_checked_for_the_url_host(tmp_path):
    """The guard connects to the checked address, but TLS still verifies the certificate and
    sends SNI for the URL's host name: a certificate for `localhost` is accepted at
    https://localhost:PORT/ and a private address is refused before any handshake."""
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    from tasks.net_guard import AddressRefused, GuardedTransport

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"), "-out",
                    str(tmp_path / "cert.pem"), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True, timeout=60)

    class Hello(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"hello tls")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))

    async def get(transport):
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get(f"https://localhost:{port}/")

    try:
        limits = httpx.Limits(max_connections=1)
        response = asyncio.run(get(GuardedTransport(limits, trusted={("localhost", port)}, verify=trust)))
        assert response.status_code == 200 and response.text == "hello tls"
        with pytest.raises(AddressRefused, match="private_address: localhost resolves to"):
            asyncio.run(get(GuardedTransport(limits, verify=trust)))
    finally:
        server.shutdown()
        server.server_close()
