"""Fetched pages into rolling WARC.gz files: a response record and its request record per page,
each gzipped on its own (so a kill tears at most the last record)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from tasks.crawl.state import StorageFailed


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

    def write(self, page: Page) -> str:
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
