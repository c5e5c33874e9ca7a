"""How outbound webhooks reach the network: an httpx transport whose every connection is judged by
`engine.core.webhook_targets` on the addresses it actually uses.

A connection resolves the receiver's host once, has every address it resolved to judged (one refused
address refuses the host: a name that answers both a public and a private address is not to be trusted),
and connects to those addresses only, by number. The name is never resolved again, so it cannot pass
the check with one answer and be connected to with another (DNS rebinding); TLS still checks the
certificate against the name (httpcore hands the name to the TLS layer as the server name). Once
connected, an address that turns out to be this machine's own (the kernel answered from it) is judged
again. Proxies from the environment are not used: through a proxy, the check would judge the proxy.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import contextmanager, suppress
from ipaddress import ip_address
from typing import Any

import anyio
import httpcore
import httpx

from engine.core.webhook_targets import IPAddress, Targets, address_problem


class TargetRefused(httpx.TransportError):
    """The receiver's address is one webhooks may not call: a permanent failure, not worth a retry."""


class _Refused(httpcore.ConnectError):
    pass


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address policy between resolving and connecting."""

    def __init__(self, targets: Targets) -> None:
        self._targets = targets
        self._network = httpcore.AnyIOBackend()

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        with suppress(ValueError):
            return [ip_address(host)]  # an address already: nothing to ask
        try:
            found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise httpcore.ConnectError(f"{host} does not resolve: {error}") from error
        addresses: list[IPAddress] = []
        for *_, sockaddr in found:
            address = ip_address(str(sockaddr[0]).partition("%")[0])  # an IPv6 zone is not part of the address
            if address not in addresses:
                addresses.append(address)
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with anyio.fail_after(timeout):
            addresses = await self._resolve(host, port)
        for address in addresses:
            problem = address_problem(host, port, address, self._targets)
            if problem is not None:
                raise _Refused(f"refused: {problem}")
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                stream = await self._network.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as error:
                failure = error
                continue
            await self._refuse_this_machine(stream, host, port, address)
            return stream
        raise failure or httpcore.ConnectError(f"{host} resolves to no address")

    async def _refuse_this_machine(
        self, stream: httpcore.AsyncNetworkStream, host: str, port: int, address: IPAddress
    ) -> None:
        # A connection to one of this machine's addresses leaves from that very address: only then are
        # the two ends equal. (Asking whether a socket can bind to it would be wrong where the kernel
        # allows binding to any address.) Nothing has been sent yet.
        ends = (stream.get_extra_info("client_addr"), stream.get_extra_info("server_addr"))
        if None in ends or ends[0][0] != ends[1][0]:
            return
        problem = address_problem(host, port, address, self._targets, local=True)
        if problem is not None:
            await stream.aclose()
            raise _Refused(f"refused: {problem}")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are sent over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._network.sleep(seconds)


# httpcore's errors as httpx's, most specific first (what httpx's own transport does).
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (_Refused, TargetRefused),
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        for raised, mapped in _ERRORS:
            if isinstance(error, raised):
                raise mapped(str(error)) from error
        raise


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over httpcore's connection pool, with `_GuardedBackend` making the connections;
    certificates are checked as httpx checks them by default (certifi's bundle, or SSL_CERT_FILE)."""

    def __init__(self, targets: Targets, limits: httpx.Limits) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(targets),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("a webhook request has an async body")
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core)
        if not isinstance(response.stream, AsyncIterable):
            raise TypeError("httpcore's async pool answers with an async body")
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
