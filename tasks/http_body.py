"""Response bodies decoded under a bound on the *decoded* bytes.

httpx decodes each raw chunk whole: 405 bytes of brotli become 1 GiB in one call, before any
size check can run. Here the raw bytes are decoded layer by layer, each decompressor asked for
no more output than the body may still take, so memory stays within about twice the limit
whatever the server sends. Content-Encoding may stack at most MAX_ENCODINGS codings, each one of
gzip, deflate or br; anything else is refused.
"""

from __future__ import annotations

import zlib

MAX_ENCODINGS = 2


class UnsupportedEncoding(ValueError):
    pass


class BodyDecodingError(ValueError):
    """The body is not what its Content-Encoding says."""


class _Zlib:
    def __init__(self, name: str):
        self.name = name
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS if name in ("gzip", "x-gzip") else zlib.MAX_WBITS)
        self.first = name == "deflate"  # "deflate" is zlib-wrapped by the standard, raw by some servers

    def decode(self, data: bytes, room: int) -> tuple[bytes, bool]:
        """(output of at most `room` bytes, whether output was left undelivered)."""
        if self.first and data:
            self.first = False
            if (data[0] & 0x0F) != 8:  # no zlib header: raw deflate
                self.d = zlib.decompressobj(-zlib.MAX_WBITS)
        out = self.d.decompress(data, room) if room > 0 else b""
        return out, bool(self.d.unconsumed_tail) or (room <= 0 and bool(data))


class _Brotli:
    def __init__(self):
        import brotli

        self.d = brotli.Decompressor()

    def decode(self, data: bytes, room: int) -> tuple[bytes, bool]:
        if room <= 0:
            return b"", bool(data)
        out = self.d.process(data, output_buffer_limit=room)
        return out[:room], len(out) > room or not self.d.can_accept_more_data()


def _layer(name: str):
    if name in ("gzip", "x-gzip", "deflate"):
        return _Zlib(name)
    if name == "br":
        return _Brotli()
    raise UnsupportedEncoding(f"unsupported Content-Encoding {name!r}")


class BoundedBody:
    """Feed raw chunks, get decoded ones; `full` once `limit` decoded bytes were delivered and
    more were on the way (the body is then cut there)."""

    def __init__(self, content_encoding: str | None, limit: int):
        names = [e.strip().lower() for e in (content_encoding or "").split(",")]
        names = [n for n in names if n and n != "identity"]
        if len(names) > MAX_ENCODINGS:
            raise UnsupportedEncoding(f"{len(names)} stacked Content-Encodings (at most {MAX_ENCODINGS})")
        self.layers = [_layer(n) for n in reversed(names)]  # the last coding applied is undone first
        self.limit, self.delivered, self.full = limit, 0, False

    def feed(self, raw: bytes) -> bytes:
        data = raw
        for layer in self.layers:  # an intermediate layer holds compressed data: bounded the same
            try:
                data, more = layer.decode(data, self.limit - self.delivered + 1)
            except Exception as e:  # zlib.error, brotli.error
                raise BodyDecodingError(f"{type(e).__name__}: {e}") from None
            if more:
                self.full = True
        if self.delivered + len(data) > self.limit:
            data = data[: self.limit - self.delivered]
            self.full = True
        self.delivered += len(data)
        return data
