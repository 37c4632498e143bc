"""extract: main text out of the HTML responses of WARC files, into Parquet documents.

The WARC files are planned into shards of about `executor.shard_bytes` (tasks/warc_ranges.py:
large files split at record boundaries, small ones grouped); shard i writes
docs/part-i.parquet, so the output depends on the shard size, never on the worker count or
the engine (tasks/executor.py). A record that cannot be handled (damaged WARC, binary body,
undecodable bytes, parser error, time-out, too large, no main text) goes to quarantine/ with
the reason instead of stopping the run; a shard whose process dies is quarantined whole.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import threading
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Literal, TypedDict

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from formats.documents import DOC_SCHEMA, doc_id
from formats.manifest import load_manifest
from formats.raw import warc_files
from tasks.executor import current_executor, map_shards
from tasks.http_body import BodyDecodingError, BoundedBody, UnsupportedEncoding
from tasks.orchestration import stage_task
from tasks.stage import Progress, no_progress
from tasks.text_blocks import render as render_blocks
from tasks.warc_ranges import describe, file_split_points, open_range, plan_shards

VERSION = 3  # 3: one line per block (text_lines)
PRELOAD = ["tasks.extract", "trafilatura", "warcio"]  # what the shard processes' forkserver imports once
EXECUTOR_LAYOUT = ("shard_bytes",)  # the executor settings the output's part files depend on

QUARANTINE_SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("warc_file", pa.string()),
        ("warc_record_id", pa.string()),
        ("offset", pa.int64()),
        ("bytes", pa.int64()),
        ("reason", pa.string()),
    ]
)


class ExtractConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["trafilatura", "resiliparse"] = "trafilatura"
    max_html_bytes: int = Field(10_000_000, ge=1, description="larger pages are quarantined")
    timeout_s: float = Field(30.0, gt=0, description="per page")
    shard_deadline_s: float = Field(3600.0, gt=0, description="a shard still running after this is killed and its records quarantined")
    include_tables: bool = True
    favor_precision: bool = False
    fast: bool = Field(True, description="trafilatura without its fallback extractors: about 1.3x faster, same text on 119 of 120 Python docs pages")
    text_lines: Literal["blocks", "source"] = Field(
        "blocks", description="blocks: one line per paragraph, heading, list item or table cell, whitespace collapsed, <pre> kept "
                              "(tasks/text_blocks.py); source: trafilatura's text, which keeps the HTML source's line wraps")
    min_text_chars: int = Field(1, ge=1)
    workers: int = Field(0, ge=0, description="shards at once on the local executor; 0 = one per core")


class Quarantined(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.I)


def decode_html(body: bytes, content_type: str) -> str:
    """Strict decoding with the declared charset (header, then meta), else UTF-8."""
    head = body[:4096]
    if b"\x00" in head:
        raise Quarantined("binary: NUL bytes in the body")
    controls = sum(1 for b in head if b < 9 or 13 < b < 32)
    if head and controls / len(head) > 0.05:
        raise Quarantined("binary: control bytes in the body")
    charset = None
    m = re.search(r"charset\s*=\s*[\"']?([A-Za-z0-9_\-:.]+)", content_type or "", re.I)
    if m:
        charset = m.group(1)
    else:
        m2 = _META_CHARSET.search(body[:8192])
        if m2:
            charset = m2.group(1).decode("ascii", "replace")
    try:
        return body.decode(charset or "utf-8")
    except LookupError:
        raise Quarantined(f"bad_encoding: unknown charset {charset!r}") from None
    except UnicodeDecodeError as e:
        declared = f"declared {charset}" if charset else "no charset declared, not UTF-8"
        raise Quarantined(f"bad_encoding: {declared}, invalid byte at {e.start}") from None


def _trafilatura(html: str, url: str, cfg: ExtractConfig) -> tuple[str, str]:
    import trafilatura

    # Metadata extraction (dates, authors) would double the cost; the title is all we keep.
    doc = trafilatura.bare_extraction(
        html,
        url=url,
        with_metadata=False,
        include_tables=cfg.include_tables,
        include_comments=False,
        favor_precision=cfg.favor_precision,
        fast=cfg.fast,
    )
    if doc is None:
        return html_title(html), ""
    if cfg.text_lines == "blocks" and doc.body is not None:
        _lines_before[0] += (doc.text or "").count("\n") + 1  # what trafilatura's own text would have had
        return html_title(html), render_blocks(doc.body)
    return html_title(html), doc.text or ""


_lines_before = [0]  # in the process running a shard: lines in trafilatura's text of the pages rendered by block


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)


def html_title(html: str) -> str:
    import html as htmllib

    m = _TITLE.search(html, 0, 65536)
    return " ".join(htmllib.unescape(m.group(1)).split()) if m else ""


def _resiliparse(html: str, url: str, cfg: ExtractConfig) -> tuple[str, str]:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse(html)
    return tree.title or "", extract_plain_text(tree, main_content=True, alt_texts=False)


BACKENDS = {"trafilatura": _trafilatura, "resiliparse": _resiliparse}


class _Timeout(BaseException):
    """Raised by SIGALRM inside the backend: a BaseException, so a library's own
    `except Exception` (trafilatura has several) cannot swallow it and keep the page running."""


def _alarm(signum, frame):
    raise _Timeout()


def extract_text(html: str, url: str, cfg: ExtractConfig) -> tuple[str, str]:
    """(title, text) with the configured backend, bounded by cfg.timeout_s where possible."""
    backend = BACKENDS[cfg.backend]
    if threading.current_thread() is not threading.main_thread():
        return backend(html, url, cfg)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, cfg.timeout_s)
    try:
        return backend(html, url, cfg)
    except _Timeout:
        raise Quarantined(f"timeout: over {cfg.timeout_s:g}s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def record_body(record, limit: int) -> tuple[bytes, bool]:
    """A response record's payload decoded by its Content-Encoding under `limit` decoded bytes
    (warcio would decode it whole: 1.4 KB of brotli make 512 MiB): (body, whether it is larger).
    A payload that is not what its header says is taken as it is, as warcio does (crawlers
    often store bodies already decoded)."""
    from warcio.bufferedreaders import ChunkedDataReader

    http = record.http_headers
    raw = record.raw_stream
    if (http.get_header("Transfer-Encoding") or "").lower() == "chunked":
        raw = ChunkedDataReader(raw, decomp_type=None)
    decoded = BoundedBody(http.get_header("Content-Encoding"), limit)
    body = bytearray()
    first = True
    while not decoded.full:
        chunk = raw.read(1 << 16)
        if not chunk:
            break
        try:
            body += decoded.feed(chunk)
        except BodyDecodingError:
            if not first:
                raise
            decoded = BoundedBody(None, limit)
            body += decoded.feed(chunk)
        first = False
    return bytes(body), decoded.full


def extract_warc(path: str, cfg: ExtractConfig, start: int = 0, end: int | None = None,
                 allow_private: bool = False) -> tuple[list[dict], list[dict], int]:
    """Documents and quarantine rows of the records of a WARC file in [start, end) (the whole
    file by default; start must be a record's offset), and the number of HTML responses seen.
    `allow_private`: an http(s) source ingested with private addresses allowed."""
    from warcio.archiveiterator import ArchiveIterator

    docs, quarantine, responses = [], [], 0
    name = Path(path).name

    def reject(url, rid, offset, size, reason):
        quarantine.append(
            {"url": url, "warc_file": name, "warc_record_id": rid, "offset": offset, "bytes": size, "reason": reason}
        )

    with ExitStack() as opened:
        try:
            reader = opened.enter_context(open_range(path, start, os.path.getsize(path) if end is None else end, allow_private))
        except Exception as e:  # noqa: BLE001
            raise SourceReadError(f"{path}: {type(e).__name__}: {e}") from e
        it = ArchiveIterator(SourceReader(reader, path))
        try:
            for record in it:
                if record.format != "warc":  # warcio reads any bytes leniently, as ARC
                    raise ValueError(f"not a WARC record (read as {record.format})")
                if record.rec_type != "response":
                    continue
                url = record.rec_headers.get_header("WARC-Target-URI") or ""
                rid = record.rec_headers.get_header("WARC-Record-ID") or ""
                http = record.http_headers
                if http is None or http.get_statuscode() != "200":
                    continue
                ctype = http.get_header("Content-Type") or ""
                if ctype and not ctype.lower().startswith(("text/html", "application/xhtml")):
                    continue
                responses += 1
                length = int(record.rec_headers.get_header("Content-Length") or 0)
                if length > cfg.max_html_bytes:
                    reject(url, rid, start + it.get_record_offset(), length, f"too_large: {length} bytes > {cfg.max_html_bytes}")
                    continue
                try:
                    body, over = record_body(record, cfg.max_html_bytes)
                except (UnsupportedEncoding, BodyDecodingError) as e:
                    reject(url, rid, start + it.get_record_offset(), length, f"{'unsupported_encoding' if isinstance(e, UnsupportedEncoding) else 'decoding_error'}: {e}"[:300])
                    continue
                if over:
                    reject(url, rid, start + it.get_record_offset(), length, f"too_large: over {cfg.max_html_bytes} bytes decoded")
                    continue
                if getattr(record.raw_stream, "limit", 0) > 0:  # the file ended inside this record
                    raise EOFError(f"record of {url} cut off after {len(body)} bytes")
                offset = start + it.get_record_offset()  # known once the record is read
                try:
                    if not body.strip():
                        raise Quarantined("empty: no body")
                    html = decode_html(body, ctype)
                    try:
                        title, text = extract_text(html, url, cfg)
                    except Quarantined:
                        raise
                    except Exception as e:
                        raise Quarantined(f"parser_error: {type(e).__name__}: {e}"[:300]) from None
                    text = text.strip()
                    if len(text) < cfg.min_text_chars:
                        raise Quarantined("empty: no main text found")
                except Quarantined as q:
                    reject(url, rid, offset, len(body), q.reason)
                    continue
                docs.append(
                    {
                        "id": doc_id(url),
                        "url": url,
                        "title": title,
                        "text": text,
                        "fetched_at": record.rec_headers.get_header("WARC-Date") or "",
                        "warc_record_id": rid,
                        "digest": record.rec_headers.get_header("WARC-Payload-Digest")
                        or "sha1:" + hashlib.sha1(body).hexdigest(),
                        "warc_file": name,
                        "html_bytes": len(body),
                        "truncated": record.rec_headers.get_header("WARC-Truncated") is not None,
                    }
                )
        except SourceReadError:  # the source could not be read (network, a vanished file): the shard fails and is retried
            raise
        except Exception as e:  # a damaged file: keep what came before, quarantine the rest
            reject(url if "url" in locals() else "", "", -1, -1, f"damaged_warc: {type(e).__name__}: {e}"[:300])
    return docs, quarantine, responses


def _write_shard(docs: list[dict], quarantine: list[dict], docs_out: str, q_out: str) -> None:
    pq.write_table(pa.Table.from_pylist(docs, DOC_SCHEMA), docs_out, compression="zstd")
    if quarantine:
        pq.write_table(pa.Table.from_pylist(quarantine, QUARANTINE_SCHEMA), q_out, compression="zstd")
    else:  # a rerun of a shard that had quarantined records before must not keep them
        Path(q_out).unlink(missing_ok=True)


class SourceReadError(RuntimeError):
    """Reading a WARC file's bytes failed: not damage to quarantine, a failure to retry."""


class SourceReader:
    """A range reader whose I/O errors say which source failed and are told apart from damage
    (which warcio and gzip report as other exceptions)."""

    def __init__(self, reader, name: str):
        self.reader, self.name = reader, name

    def read(self, n: int = -1) -> bytes:
        try:
            return self.reader.read(n)
        except Exception as e:  # noqa: BLE001
            raise SourceReadError(f"{self.name}: {type(e).__name__}: {e}") from e

    def readline(self, limit: int = -1) -> bytes:
        try:
            return self.reader.readline(limit)
        except Exception as e:  # noqa: BLE001
            raise SourceReadError(f"{self.name}: {type(e).__name__}: {e}") from e


def check_source(source: dict) -> None:
    """Refuse a source whose bytes are no longer those ingest recorded (size, ETag): the
    dataset would not describe what is read. A vanished source fails with its URL."""
    try:
        now = describe(source["url"], source.get("allow_private", False))
    except Exception as e:  # noqa: BLE001 - unreachable or gone: named, and the shard is retried
        raise SourceReadError(f"{source['url']}: cannot be read: {type(e).__name__}: {e}") from None
    changed = [k for k in ("size", "etag", "modified") if source.get(k) not in ("", None) and now[k] != source[k]]
    if changed:
        raise SourceReadError(
            f"{source['url']}: changed since ingest ({', '.join(f'{k} {source[k]!r} -> {now[k]!r}' for k in changed)}); "
            "run ingest again, which makes a new raw dataset")


def extract_shard(args) -> dict:
    ranges, cfg, docs_out, q_out, *sources = args
    for source in sources[0] if sources else []:
        check_source(source)
    private_ok = {s["url"] for s in (sources[0] if sources else []) if s.get("allow_private")}
    docs, quarantine, responses = [], [], 0
    _lines_before[0] = 0
    for r in ranges:
        d, q, n = extract_warc(r[0], cfg, r[1], r[2], allow_private=r[0] in private_ok)
        docs += d
        quarantine += q
        responses += n
    _write_shard(docs, quarantine, docs_out, q_out)
    return {"documents": len(docs), "quarantined": len(quarantine), "html_responses": responses, "reasons": _reasons(quarantine),
            "lines": sum(d["text"].count("\n") + 1 for d in docs), "lines_in_trafilatura_text": _lines_before[0]}


def _reasons(quarantine: list[dict]) -> dict[str, int]:
    """Quarantined records by the kind of reason (the part before its colon)."""
    return dict(Counter(q["reason"].split(":")[0] for q in quarantine))


def quarantine_crashed_shard(args, reason: str) -> dict:
    """The shard's process died (a parser crash) or was killed at its deadline: its records are
    quarantined, the stage goes on."""
    ranges, _, docs_out, q_out, *_ = args
    rows = [{"url": "", "warc_file": Path(r[0]).name, "warc_record_id": "", "offset": r[1], "bytes": r[2] - r[1],
             "reason": f"crashed: {reason}"[:300]} for r in ranges]
    _write_shard([], rows, docs_out, q_out)
    return {"documents": 0, "quarantined": len(rows), "html_responses": 0, "reasons": _reasons(rows)}


class ExtractInputs(TypedDict):
    raw: list[str]  # crawl, ingest or recrawl datasets


def extract(inputs: ExtractInputs, cfg: ExtractConfig, out: Path, progress: Progress = no_progress) -> dict:
    raw = inputs["raw"]
    files = warc_files(raw)
    if not files and not all(load_manifest(ds).stage == "recrawl" for ds in raw):
        raise ValueError("extract: the raw datasets hold no WARC file")  # a refresh that found no change has none
    (out / "docs").mkdir(exist_ok=True)
    (out / "quarantine").mkdir(exist_ok=True)
    shard_bytes = current_executor().shard_bytes
    sized = [(f["url"], f["size"]) for f in files]
    private_ok = {f["url"] for f in files if f.get("allow_private")}
    points, _ = map_shards(file_split_points, [(url, (url, shard_bytes, size, url in private_ok)) for url, size in sized], out / ".plan",
                           PRELOAD, workers=cfg.workers)
    shards = plan_shards(sized, shard_bytes, points)
    outside = {f["url"]: f for f in files if "modified" in f}  # ingested sources, checked before a shard reads them
    jobs = [
        (", ".join(f"{Path(r.path).name}[{r.start}:{r.end}]" for r in ranges),
         ([tuple(r) for r in ranges], cfg, str(out / "docs" / f"part-{i:05d}.parquet"), str(out / "quarantine" / f"part-{i:05d}.parquet"),
          [outside[u] for u in dict.fromkeys(r.path for r in ranges) if u in outside]))
        for i, ranges in enumerate(shards)
    ]
    results, ran = map_shards(extract_shard, jobs, out, PRELOAD, progress,
                              workers=cfg.workers, on_crash=quarantine_crashed_shard, deadline_s=cfg.shard_deadline_s)
    reasons: Counter = Counter()
    for r in results:  # from the shards' results: their files may be in an object store, not here
        reasons.update(r["reasons"])
    return {
        "warc_files": len(files),
        "shards": len(jobs),
        "shards_processed": ran,
        "html_responses": sum(r["html_responses"] for r in results),
        "documents": sum(r["documents"] for r in results),
        "quarantined": sum(r["quarantined"] for r in results),
        "quarantined_by_reason": dict(reasons),
        # one line per block: the lines the documents have, and those trafilatura's own text had (its
        # extra lines are wraps of the HTML source inside blocks, which line rules would judge as lines)
        "lines": sum(r.get("lines", 0) for r in results),
        "lines_in_trafilatura_text": sum(r.get("lines_in_trafilatura_text", 0) for r in results),
        "backend": cfg.backend,
    }


extract_task = stage_task(extract, sharded=True)
