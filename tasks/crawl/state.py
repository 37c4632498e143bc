"""What a crawl keeps on disk to resume: an append-only journal of the frontier (`seen`) and of
settled URLs (`done`), and the WARC files, which are the truth for what was stored: a record
torn by a kill is cut off, any other damage stops the resume with the file named."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator

from formats.jsonl import cut_torn_tail, read_records

KEPT = ("page", "not_modified")  # outcomes that leave a page in the corpus


class StorageFailed(Exception):
    """Writing the journal or a WARC file failed (disk full, ...): the crawl ends with it, since
    going on would fetch pages it cannot keep or record."""


class Journal:
    """Append-only JSON lines: `seen` when a URL enters the frontier, `done` when settled. A line
    torn by a kill is cut before anything is appended (formats/jsonl.py)."""

    def __init__(self, path: Path):
        self.path = path
        cut_torn_tail(path)
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, **event) -> None:
        try:
            self.fh.write(json.dumps(event, separators=(",", ":")) + "\n")
            self.fh.flush()
        except OSError as e:
            raise StorageFailed(f"writing the crawl journal {self.path}: {e}") from e

    def close(self) -> None:
        try:
            self.fh.close()
        except OSError:  # what the failed write left in the buffer: the next open cuts its torn line
            pass

    @staticmethod
    def read(path: Path) -> list[dict]:
        cut_torn_tail(path)
        return read_records(path)


def torn_at(path: Path, offset: int) -> bool:
    """Whether the bytes of `path` from `offset` are one gzip member cut short (what a kill
    leaves: each WARC record is a member of its own), rather than damage followed by more."""
    inflate = zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 20):
            try:
                inflate.decompress(chunk, 1 << 20)
                while inflate.unconsumed_tail:
                    inflate.decompress(inflate.unconsumed_tail, 1 << 20)
            except zlib.error:
                return False
            if inflate.eof:
                return False  # a whole member that warcio could not read: damage, not a tear
    return True


def stored_urls(warc_dir: Path) -> set[str]:
    """URLs of complete response records. A torn record at a file's end is cut off; any other
    damage, and any read error, fails here with the file named, and nothing is cut."""
    urls: set[str] = set()
    for path in sorted(warc_dir.glob("*.warc.gz")):
        good_end = 0
        try:
            with open(path, "rb") as f:
                it = ArchiveIterator(f)
                for record in it:
                    url = record.rec_headers.get_header("WARC-Target-URI") if record.rec_type == "response" else None
                    record.content_stream().read()
                    it.read_to_end()
                    good_end = it.get_record_offset() + it.get_record_length()
                    if url:
                        urls.add(url)
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - warcio and zlib raise many kinds on bad bytes
            if not torn_at(path, good_end):
                raise StorageFailed(f"{path}: damaged at byte {good_end} ({type(e).__name__}: {e}), not torn at its end; "
                                    "move the file aside to resume without it") from e
        if good_end < path.stat().st_size:
            if not torn_at(path, good_end):
                raise StorageFailed(f"{path}: unreadable bytes from {good_end} that are not a torn last record")
            with open(path, "r+b") as f:
                f.truncate(good_end)
    return urls
