"""The address rule applied to the connection that is actually made.

Checking a URL's host before a request and letting the HTTP client connect afterwards resolves
the name twice: a DNS answer that changes between the two (rebinding) passes the check, and so
does a name the check and the client spell differently (`straße.example` resolved by the check
under IDNA 2003 as `strasse.example`, by httpx under IDNA 2008 as `xn--strae-oqa.example`). Here
the name is resolved once, at connect time, under the spelling the client sends; every address
must be public, and the socket is opened to those checked addresses, never to the name. Pages,
redirect hops and robots.txt all go through it, because it sits under the client's pool.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import typing

import httpcore
import httpx

from tasks.urls import is_public_address


class AddressRefused(OSError):
    """A connection the address rule refuses; `reason` is what the crawl journal records. An
    OSError, so that clients which wrap connection errors (aiohttp) keep it as the cause."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


async def checked_addresses(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, once; refused when any of them is not public."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise httpcore.ConnectError(f"dns_error: {host}: {e}") from e
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    private = [a for a in addresses if not is_public_address(a)]
    if private or not addresses:
        raise AddressRefused(f"private_address: {host} resolves to {', '.join(private) or 'nothing'}")
    return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address rule at connect_tcp. TLS still verifies the
    certificate and sends SNI for the URL's host: httpcore takes both from the request's origin,
    not from the address connected to."""

    def __init__(self, trusted: typing.Collection[tuple[str, int]] = (), allow_private: bool = False,
                 served: typing.Mapping[tuple[str, int], tuple[str, int]] | None = None):
        self.inner = httpcore.AnyIOBackend()
        self.trusted = set(trusted)  # (host, port) of servers this process started itself
        self.allow_private = allow_private
        # (host, port) in URLs -> where a server this process started listens: its pages keep a
        # stable name (builtin:pydoc's), whatever port it was given (curl's --connect-to)
        self.served = dict(served or {})

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: typing.Iterable | None = None) -> httpcore.AsyncNetworkStream:
        if (host, port) in self.served:
            host, port = self.served[host, port]
            return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        if self.allow_private or (host, port) in self.trusted:
            return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        failure: Exception | None = None
        for address in await checked_addresses(host, port):
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as e:  # the next address of the name, as a resolver-driven connect would
                failure = e
        assert failure is not None
        raise failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: typing.Iterable | None = None):
        raise AddressRefused("unix_socket: not a network address")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a pool whose every connection goes through GuardedBackend.
    httpx takes no network backend of its own, so the pool it built is replaced by the same
    pool with the guarded backend (and no proxy from the environment: a proxy would be the
    address checked, not the page's)."""

    def __init__(self, limits: httpx.Limits, trusted: typing.Collection[tuple[str, int]] = (), allow_private: bool = False,
                 verify: ssl.SSLContext | bool = True, served: typing.Mapping[tuple[str, int], tuple[str, int]] | None = None):
        super().__init__(limits=limits, trust_env=False, verify=verify)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=self._pool._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(trusted, allow_private, served),
        )


def http_options(url: str, allow_private: bool) -> dict:
    """fsspec storage options for `url`: for http(s), a client whose every connection (redirect
    hops included) passes the address rule, unless private addresses are allowed."""
    if allow_private or not url.lower().startswith(("http://", "https://")):
        return {}
    return {"get_client": guarded_aiohttp_client}


async def guarded_aiohttp_client(**kwargs):
    """fsspec's HTTP filesystem's aiohttp session, on a connector with the address rule."""
    import aiohttp

    class GuardedConnector(aiohttp.TCPConnector):
        # aiohttp resolves here for every connection and connects to exactly what this returns;
        # an IP literal comes through here too, unresolved
        async def _resolve_host(self, host, port, *args, **kw):
            hosts = await super()._resolve_host(host, port, *args, **kw)
            private = [h["host"] for h in hosts if not is_public_address(h["host"])]
            if private or not hosts:
                raise AddressRefused(f"private_address: {host} resolves to {', '.join(private) or 'nothing'}")
            return hosts

    return aiohttp.ClientSession(connector=GuardedConnector(), **kwargs)


def refusal_of(error: BaseException) -> str | None:
    """The address rule's reason when `error` is (or was caused by) a refusal."""
    while error is not None:
        if isinstance(error, AddressRefused):
            return error.reason
        error = error.__cause__ or error.__context__
    return None
