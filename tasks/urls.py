"""URL normalization and the network-safety rules the crawler applies to every hop."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urljoin, urlsplit, urlunsplit

from courlan import clean_url

SKIPPED_EXTENSIONS = frozenset(
    ".7z .avi .bin .bmp .bz2 .css .csv .dmg .doc .docx .eot .exe .gif .gz .ico .iso .jar .jpeg .jpg "
    ".js .json .mov .mp3 .mp4 .msi .ogg .otf .pdf .png .ppt .pptx .rar .rss .svg .tar .tgz .tif "
    ".tiff .ttf .wav .webm .webp .woff .woff2 .xls .xlsx .xml .xz .zip".split()
)


def normalize_url(url: str, base: str | None = None) -> str | None:
    """One spelling per page: absolute, lower-case scheme and host, no default port, no
    fragment, dot segments resolved, tracking parameters dropped, query sorted.
    Returns None for anything that is not an http(s) URL."""
    try:
        absolute = urljoin(base, url.strip()) if base else url.strip()
        parts = urlsplit(absolute)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    try:
        port = parts.port
    except ValueError:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    path = urljoin("/", parts.path or "/")  # resolves ./ and ../
    rebuilt = urlunsplit((scheme, netloc, path, parts.query, ""))
    cleaned = clean_url(rebuilt)  # drops tracking parameters, sorts the query
    return cleaned or rebuilt


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def origin_of(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


def in_allowed_domains(url: str, allowed: list[str]) -> bool:
    host = host_of(url)
    return any(host == d or host.endswith("." + d) for d in allowed)


def looks_non_html(url: str) -> bool:
    path = urlsplit(url).path.lower()
    dot = path.rfind(".")
    return dot > path.rfind("/") and path[dot:] in SKIPPED_EXTENSIONS


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: the last 32 bits are the IPv4 address reached
NOT_ROUTED_V6 = [ipaddress.ip_network(n) for n in ("::/96", "64:ff9b:1::/48")]  # IPv4-compatible; local-use NAT64


def is_public_address(addr: str) -> bool:
    """A global unicast address. An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4)
    is judged by that IPv4 address: `64:ff9b::7f00:1` reaches 127.0.0.1 through a NAT64
    gateway. Teredo is refused: where its tunnel ends cannot be judged from here."""
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo or any(ip in net for net in NOT_ROUTED_V6):
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


def private_address_reason(url: str) -> str | None:
    """The reason to refuse `url` when its host resolves to a non-public address (ingest's sources,
    checked when listed; tasks/net_guard.py checks each connection)."""
    p = urlsplit(url)
    try:
        infos = socket.getaddrinfo(p.hostname or "", p.port or (443 if p.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except OSError as e:
        return f"dns_error: {e}"
    private = sorted({info[4][0] for info in infos if not is_public_address(info[4][0])})
    if private:
        return f"private_address: {p.hostname} resolves to {', '.join(private)}"
    return None
