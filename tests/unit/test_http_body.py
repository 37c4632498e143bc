"""Bodies decoded under a bound on the decoded bytes (tasks/http_body.py)."""

import gzip
import tracemalloc
import zlib

import brotli
import pytest

from tasks.http_body import BodyDecodingError, BoundedBody, UnsupportedEncoding

TEXT = b"<html><body>" + b"a paragraph of text, " * 5000 + b"</body></html>"


# ids by name: gzip output carries its time of writing, and xdist refuses a run whose workers
# collected different test ids (two workers collecting in different seconds did, once)
BODIES = {"none": (None, TEXT), "identity": ("identity", TEXT), "gzip": ("gzip", gzip.compress(TEXT, mtime=0)),
          "deflate-zlib": ("deflate", zlib.compress(TEXT)), "deflate-raw": ("deflate", zlib.compress(TEXT)[2:-4]),
          "br": ("br", brotli.compress(TEXT)), "gzip-then-br": ("gzip, br", brotli.compress(gzip.compress(TEXT, mtime=0)))}


@pytest.mark.parametrize("encoding, raw", list(BODIES.values()), ids=list(BODIES))
def test_bodies_decode_whole_under_the_limit(encoding, raw):
    body = BoundedBody(encoding, len(TEXT))
    out = b"".join(body.feed(raw[i : i + 1000]) for i in range(0, len(raw), 1000))
    assert out == TEXT and not body.full


@pytest.mark.parametrize("encoding", ["br", "gzip, gzip"])
def test_a_compression_bomb_yields_the_limit_without_growing_memory(encoding):
    zeros = b"\0" * (64 << 20)
    raw = brotli.compress(zeros, quality=1) if encoding == "br" else gzip.compress(gzip.compress(zeros, 1))
    assert len(raw) < 300_000
    tracemalloc.start()
    try:
        body = BoundedBody(encoding, 100_000)
        out = body.feed(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == b"\0" * 100_000 and body.full
    assert peak < 2 * 1024 * 1024, peak  # 64 MiB decoded by httpx at once; here a few hundred KB


@pytest.mark.parametrize("encoding", ["gzip, gzip, gzip", "zstd", "compress"])
def test_unsupported_or_deeply_stacked_encodings_are_refused(encoding):
    with pytest.raises(UnsupportedEncoding):
        BoundedBody(encoding, 1000)


def test_a_body_that_is_not_its_encoding_is_a_decoding_error():
    with pytest.raises(BodyDecodingError):
        BoundedBody("gzip", 1000).feed(b"this is not gzip at all")
