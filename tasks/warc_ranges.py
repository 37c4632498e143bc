"""Work units of WARC bytes: large files split at record boundaries, small ones grouped.

A shard is a list of byte ranges [start, end) of WARC files, each starting at a record. In a
`.warc.gz` file every record is its own gzip member (the WARC standard's recommendation, and
what Common Crawl and our crawler write), so a boundary is found by scanning forward from a
split point for a gzip header whose member decompresses, complete, to a `WARC/` record. In a
plain `.warc` file the records are walked by their Content-Length, reading headers only.
A file that cannot be split (one gzip member for the whole file, a damaged header) stays
whole: splitting only ever changes how work is divided, never what is read.

A file is a local path or an fsspec URL (HTTP(S) with range requests, S3, ...): the scan and
the shards read it in ranges where it lies.
"""

from __future__ import annotations

import os
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from formats.store import is_url

GZIP_MAGIC = b"\x1f\x8b\x08"
_SCAN = 64 << 10  # bytes read at a time while looking for the next member: a record's gzip member is
# typically tens of KB, and a remote scan pays for every byte it reads (1 MB windows read 3.9x
# the WARC's bytes over HTTP at 470 KB shards: bench/ingest.py)
_READ_BLOCK = 1 << 20  # bytes per ranged request while reading a shard's records


class WarcRange(NamedTuple):
    path: str
    start: int
    end: int


def _is_member_start(f, pos: int, limit: int) -> bool:
    """Whether a complete gzip member holding a WARC record starts at pos."""
    f.seek(pos)
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    head = b""
    try:
        while pos < limit and not d.eof:
            chunk = f.read(min(_SCAN, limit - pos))
            if not chunk:
                return False
            pos += len(chunk)
            out = d.decompress(chunk)
            if len(head) < 8:
                head += out[:8]
                if len(head) >= 8 and not head.startswith(b"WARC/"):
                    return False
    except zlib.error:
        return False
    return d.eof and head.startswith(b"WARC/")


def _next_gzip_record(f, point: int, size: int) -> int | None:
    """The first offset >= point where a gzip member with a WARC record starts."""
    pos = point
    while pos < size:
        f.seek(pos)
        window = f.read(_SCAN + len(GZIP_MAGIC))
        at = window.find(GZIP_MAGIC)
        while at != -1 and at < _SCAN:
            if _is_member_start(f, pos + at, size):
                return pos + at
            at = window.find(GZIP_MAGIC, at + 1)
        pos += _SCAN
    return None


def _plain_record_starts(f, size: int) -> list[int]:
    """Offsets of every record of an uncompressed WARC file, walked by Content-Length."""
    starts, pos = [], 0
    while pos < size:
        f.seek(pos)
        if f.read(5) != b"WARC/":
            break
        f.seek(pos)
        header_bytes, length = 0, None
        while True:
            line = f.readline(65536)
            if not line:
                return starts
            header_bytes += len(line)
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    return starts
        if length is None:
            break
        starts.append(pos)
        pos += header_bytes + length + 4  # the record block, then CRLF CRLF
    return starts


def source_fs(url: str, allow_private: bool = False):
    """(fsspec filesystem, path) for a source URL; http(s) connections under the address rule
    (tasks/net_guard.py) unless the ingest config allowed private addresses."""
    import fsspec

    from tasks.net_guard import http_options

    return fsspec.core.url_to_fs(url, **http_options(url, allow_private))


def open_source(path: str, block_size: int = _READ_BLOCK, allow_private: bool = False):
    """A seekable binary file object for a local path or an fsspec URL (ranged reads of
    block_size bytes ahead of each read)."""
    if not is_url(path):
        return open(path.removeprefix("file://"), "rb")
    fs, inner = source_fs(path, allow_private)
    return fs.open(inner, "rb", block_size=block_size, cache_type="readahead")


def describe(url: str, allow_private: bool = False) -> dict:
    """What identifies a source's bytes: its size and ETag (HTTP, S3) or modification time;
    `allow_private` is recorded with it, so every later read applies the same address rule."""
    from tasks.net_guard import refusal_of

    fs, path = source_fs(url, allow_private)
    try:
        info = fs.info(path)
    except FileNotFoundError as e:
        refusal = refusal_of(e)
        if refusal:
            raise ValueError(f"{url}: refused ({refusal}); set ingest.allow_private_addresses to read it") from None
        raise FileNotFoundError(f"{url}: no such WARC file") from None
    if info.get("size") is None:
        raise ValueError(f"{url}: the server gives no size, so the file cannot be read in ranges")
    etag = info.get("ETag") or info.get("etag") or ""
    modified = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    described = {"url": url, "size": int(info["size"]), "etag": str(etag).strip('"'), "modified": str(modified)}
    return described | ({"allow_private": True} if allow_private and is_url(url) else {})


def split_points(path: str | Path, shard_bytes: int, size: int | None = None, allow_private: bool = False) -> list[int]:
    """Record offsets at which `path` (of `size` bytes, looked up when not given) is cut into
    pieces of about shard_bytes (0 first)."""
    size = os.path.getsize(path) if size is None else size
    if size <= shard_bytes:
        return [0]
    points = [0]
    with open_source(str(path), block_size=_SCAN, allow_private=allow_private) as f:
        if str(path).endswith(".gz"):
            target = shard_bytes
            while target < size:
                at = _next_gzip_record(f, target, size)
                if at is None:
                    break
                if at > points[-1]:
                    points.append(at)
                target = max(at, target) + shard_bytes
        else:
            starts = _plain_record_starts(f, size)
            target = shard_bytes
            for s in starts:
                if s >= target:
                    points.append(s)
                    target = s + shard_bytes
    return points


def file_split_points(args) -> list[int]:
    """split_points as a job for the executor: (path or URL, shard_bytes, size[, allow_private])."""
    path, shard_bytes, size, *allow_private = args
    return split_points(path, shard_bytes, size, bool(allow_private and allow_private[0]))


def plan_shards(files: list, shard_bytes: int, points: list[list[int]] | None = None) -> list[list[WarcRange]]:
    """Shards of about shard_bytes each, in file order: pieces of large files, groups of small
    ones. A file is a path, or (path or URL, size) where the size is known already; `points`,
    each file's split points where they were found already (on the executor: remote files
    are scanned where the workers are, and a failed scan is retried like any shard)."""
    pieces = []
    for n, file in enumerate(files):
        path, size = (str(file), os.path.getsize(file)) if isinstance(file, (str, Path)) else (str(file[0]), int(file[1]))
        cuts = (points[n] if points is not None else split_points(path, shard_bytes, size)) + [size]
        pieces += [WarcRange(path, a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    shards: list[list[WarcRange]] = []
    filled = 0
    for piece in pieces:
        n = piece.end - piece.start
        if not shards or filled + n > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(piece)
        filled += n
    return shards


@contextmanager
def open_range(path: str, start: int, end: int, allow_private: bool = False):
    """A reader of [start, end) of a local file or an fsspec URL, which reads nothing past end."""
    if not is_url(path):
        with open(path.removeprefix("file://"), "rb") as f:
            yield RangeReader(f, start, end)
        return
    fs, inner = source_fs(path, allow_private)
    yield RemoteRange(fs, inner, start, end)


class RemoteRange:
    """[start, end) of a remote file, fetched in ranged requests of up to `chunk` bytes for
    exactly the bytes of the range: an fsspec readahead file fetches a block past every read,
    which at the end of each shard is up to a block of the next shard's bytes."""

    def __init__(self, fs, path: str, start: int, end: int, chunk: int = _READ_BLOCK):
        self.fs, self.path, self.pos, self.end, self.chunk = fs, path, start, end, chunk
        self.buf, self.off = b"", 0

    def _fill(self, want: int) -> None:
        """Fetch until `want` bytes are buffered or the range is exhausted."""
        while len(self.buf) - self.off < want and self.pos < self.end:
            size = min(max(self.chunk, want - (len(self.buf) - self.off)), self.end - self.pos)
            data = self.fs.cat_file(self.path, start=self.pos, end=self.pos + size)
            if not data:
                raise EOFError(f"{self.path}: no bytes at offset {self.pos} (the file is shorter than planned)")
            self.buf, self.off = self.buf[self.off:] + data, 0
            self.pos += len(data)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = len(self.buf) - self.off + self.end - self.pos
        self._fill(n)
        data = self.buf[self.off : self.off + n]
        self.off += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        limit = len(self.buf) - self.off + self.end - self.pos if limit is None or limit < 0 else limit
        while True:
            at = self.buf.find(b"\n", self.off, self.off + limit)
            if at != -1:
                return self.read(at + 1 - self.off)
            buffered = len(self.buf) - self.off
            if buffered >= limit or self.pos >= self.end:
                return self.read(min(limit, buffered))
            self._fill(buffered + 1)


class RangeReader:
    """A file object that reads [start, end) of a file and nothing past it."""

    def __init__(self, f, start: int, end: int):
        self.f, self.left = f, end - start
        f.seek(start)

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        limit = self.left if limit is None or limit < 0 else min(limit, self.left)
        line = self.f.readline(limit)
        self.left -= len(line)
        return line
