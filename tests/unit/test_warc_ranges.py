"""Byte-range shards of WARC files: cut only at record starts, covering every byte once."""

from __future__ import annotations

import gzip
import os

import pytest
from warcio.archiveiterator import ArchiveIterator

from tasks.extract import ExtractConfig, extract_warc
from tasks.warc_ranges import RangeReader, plan_shards, split_points
from tests.helpers import python_doc_pages, write_warc


def record_offsets(path) -> list[int]:
    with open(path, "rb") as f:
        it = ArchiveIterator(f)
        return [it.get_record_offset() for _ in it]


@pytest.mark.parametrize("name", ["docs.warc.gz", "docs.warc"])
def test_a_large_file_is_cut_at_record_starts_and_read_in_pieces_as_a_whole(tmp_path, name):
    warc = write_warc(tmp_path / name, python_doc_pages(30))
    size = warc.stat().st_size
    points = split_points(warc, size // 7)
    assert 6 <= len(points) - 1 <= 8 and points[0] == 0
    assert set(points) <= set(record_offsets(warc))  # every cut is a record's start
    shards = plan_shards([warc], size // 7)
    pieces = [r for shard in shards for r in shard]
    assert [p.start for p in pieces] == points and pieces[-1].end == size
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))  # contiguous: no byte read twice or skipped
    whole, whole_q, whole_n = extract_warc(str(warc), ExtractConfig())
    parts = [extract_warc(p.path, ExtractConfig(), p.start, p.end) for p in pieces]
    assert [d for docs, _, _ in parts for d in docs] == whole and len(whole) == 30
    assert sum(n for _, _, n in parts) == whole_n and not whole_q and not any(q for _, q, _ in parts)


def test_small_files_are_grouped_and_a_file_under_the_size_stays_whole(tmp_path):
    pages = python_doc_pages(3)
    files = [write_warc(tmp_path / f"{i}.warc.gz", pages) for i in range(4)]
    largest = max(f.stat().st_size for f in files)
    shards = plan_shards(files, int(2.5 * largest))
    assert [[r.path for r in s] for s in shards] == [[str(files[0]), str(files[1])], [str(files[2]), str(files[3])]]
    assert all(r.start == 0 and r.end == os.path.getsize(r.path) for s in shards for r in s)
    assert plan_shards(files, 10 * largest) == [[r for s in shards for r in s]]


def test_gzip_magic_inside_a_member_is_not_taken_for_a_record_start(tmp_path):
    # payloads that hold gzip members of their own: a false start would decompress to a WARC record
    fake = gzip.compress(b"WARC/1.0\r\nWARC-Type: response\r\n\r\n")
    pages = [(f"https://example.org/{i}.html", b"<html><body><p>" + fake * 200 + b"</p></body></html>", "text/html")
             for i in range(6)]
    warc = write_warc(tmp_path / "tricky.warc.gz", pages)
    points = split_points(warc, 2000)
    assert set(points) <= set(record_offsets(warc)) and len(points) > 1


def test_a_single_gzip_member_cannot_be_split_and_stays_whole(tmp_path):
    plain = write_warc(tmp_path / "docs.warc", python_doc_pages(5))
    one_member = tmp_path / "one.warc.gz"
    one_member.write_bytes(gzip.compress(plain.read_bytes()))
    assert split_points(one_member, 1000) == [0]
    assert plan_shards([one_member], 1000) == [[(str(one_member), 0, one_member.stat().st_size)]]


def test_range_reader_stops_at_the_end(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"0123456789\nabcdef")
    with open(f, "rb") as fh:
        r = RangeReader(fh, 2, 13)
        assert r.readline() == b"23456789\n" and r.read() == b"ab" and r.read() == b""


def test_a_remote_range_reads_exactly_its_bytes_in_chunks(tmp_path):
    """fsspec's in-memory filesystem counts nothing, so the reads are counted around cat_file."""
    import fsspec

    from tasks.warc_ranges import RemoteRange

    fs = fsspec.filesystem("memory")
    body = b"".join(b"line %d of the file\n" % i for i in range(2000))
    fs.pipe_file("/range-test/file", body)
    asked = []

    class Counting:
        def cat_file(self, path, start, end):
            asked.append((start, end))
            return fs.cat_file(path, start=start, end=end)

    start, end = 1000, 30_000
    reader = RemoteRange(Counting(), "/range-test/file", start, end, chunk=4096)
    got = reader.readline() + reader.read(10) + reader.readline(5)
    while (line := reader.readline()):
        got += line
    assert got == body[start:end] and reader.read() == b""
    assert sum(e - s for s, e in asked) == end - start  # nothing fetched twice, nothing past end
    assert max(e - s for s, e in asked) <= 4096 and asked[-1][1] == end
