"""The adapter's SSRF defence: which addresses an API source may reach, enforced at connect time.

An API source's base URL is fixed at registration (scheme, host, port); arguments can never
change it (:mod:`gateway.apiadapter.request`). What its host *resolves to* can still change at
any time, so the check happens where the connection is made, on the addresses actually
dialled (docs/api-adapter.md "SSRF rules"):

* **always refused**, even for a source approved as internal: the unspecified address
  (``0.0.0.0/8``, ``::``), multicast, the IPv4 limited broadcast and cloud metadata
  endpoints (``169.254.169.254``, ``fd00:ec2::254``, ``169.254.170.2``, ``169.254.170.23``,
  ``fd00:ec2::23``, ``100.100.100.200``, ``168.63.129.16``);
* **refused unless the source is internal**: everything that is not globally routable
  (:attr:`ipaddress.IPv4Address.is_global`): loopback, RFC 1918 private, link-local,
  shared address space (``100.64.0.0/10``), unique-local (``fc00::/7``), site-local,
  documentation, benchmarking and reserved ranges.

IPv4 embedded in IPv6 is checked as the IPv4 address it stands for: IPv4-mapped
(``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``, RFC 4291 section 2.5.5.1, deprecated
but still routed by some stacks; ``::`` and ``::1`` excepted), IPv4-translated
(``::ffff:0:a.b.c.d``, RFC 2765 SIIT), NAT64 (``64:ff9b::/96``), 6to4 (``2002::/16``) and
Teredo. Both the IPv6 address and the IPv4 address inside must be allowed.

:class:`GuardedBackend` is an ``httpcore`` network backend that resolves the host itself,
refuses the connection when **any** resolved address is refused (a name that resolves to a
public and a private address is refused whole), and dials the checked address — never the
name again — so DNS rebinding between the check and the connection is impossible. TLS still
verifies the URL's host name: httpcore passes the origin's host as ``server_hostname``.
:class:`GuardedTransport` puts it under httpx (public httpx/httpcore API only).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import httpcore
import httpx

from gateway.errors import UpstreamAddressRefused

__all__ = ["GuardedBackend", "GuardedTransport", "refusal"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS Pod Identity agent
        "fd00:ec2::23",  # AWS EKS Pod Identity agent over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer (a public address: refused for every source)
    )
)
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_V4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
# IANA special-purpose ranges that are not globally reachable but that some Python versions'
# ``is_global`` still calls global (fixed in later releases); listed so the rule holds on all.
_NOT_GLOBAL: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.IPv4Network("192.0.0.0/24"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("2001:2::/48"),
    ipaddress.IPv6Network("2001:10::/28"),
    ipaddress.IPv6Network("5f00::/16"),
    _SITE_LOCAL,
)


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (mapped, compatible, translated, NAT64,
    6to4, Teredo)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if (ip in _V4_COMPATIBLE and int(ip) > 1) or ip in _V4_TRANSLATED or ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def _always_refused(ip: IPAddress) -> str | None:
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return "unspecified"
    if ip in _METADATA:
        return "metadata"
    if ip == _BROADCAST:
        return "broadcast"
    if ip.is_multicast:
        return "multicast"
    return None


def _not_global(ip: IPAddress) -> str | None:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _SHARED:
            return "shared"
        if any(ip in net for net in _RFC1918):
            return "private"
    elif ip in _UNIQUE_LOCAL:
        return "unique_local"
    elif ip in _SITE_LOCAL:
        return "site_local"
    if not ip.is_global or any(ip.version == net.version and ip in net for net in _NOT_GLOBAL):
        return "reserved" if ip.is_reserved else "non_global"
    return None


def refusal(ip: IPAddress, *, internal: bool) -> str | None:
    """Why an API source may not connect to ``ip``, or None when it may.

    Args:
        ip: A resolved address (IPv4-mapped: judged as its IPv4 address; another IPv6 address
            with an IPv4 address inside: judged as both).
        internal: The source was approved as internal: non-global addresses are allowed.

    Returns:
        The address class refused, safe to log and show: ``unspecified``, ``metadata``,
        ``broadcast``, ``multicast`` (refused for every source), or for a source not internal
        ``loopback``, ``link_local``, ``shared``, ``private``, ``unique_local``,
        ``site_local``, ``reserved``, ``non_global``; None when allowed.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for candidate in (ip, *_embedded_ipv4(ip)):
        reason = _always_refused(candidate)
        if reason is None and not internal:
            reason = _not_global(candidate)
        if reason is not None:
            return reason
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An ``httpcore`` network backend that dials only addresses :func:`refusal` allows.

    Args:
        internal: The source was approved as internal (see :func:`refusal`).
        inner: The backend that dials an address (default :class:`httpcore.AnyIOBackend`).

    ``connect_tcp`` raises :class:`~gateway.errors.UpstreamAddressRefused` (naming the host
    and the address class, nothing of a URL) before any connection is attempted when any
    address of the host is refused; ``httpcore.ConnectTimeout`` when resolving and dialling
    take longer than the connect timeout; ``httpcore.ConnectError`` when the name does not
    resolve or no address accepts. Unix sockets are always refused.
    """

    def __init__(self, *, internal: bool, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.internal = internal
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` stands for (an IP literal: itself), in resolver order.

        Raises:
            httpcore.ConnectError: The name does not resolve.
        """
        literal = _literal(host)
        if literal is not None:
            return [literal]
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {type(exc).__name__}") from exc
        found: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
            if address not in found:
                found.append(address)
        if not found:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: no address")
        return found

    def check(self, host: str, addresses: Iterable[IPAddress]) -> None:
        """Raises :class:`~gateway.errors.UpstreamAddressRefused` when any address is refused."""
        for address in addresses:
            reason = refusal(address, internal=self.internal)
            if reason is not None:
                raise UpstreamAddressRefused(f"API host {host!r} resolves to a {reason} address")

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = anyio.current_time() + timeout if timeout is not None else None
        try:
            with anyio.fail_after(timeout):
                addresses = await self.resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from None
        self.check(host, addresses)
        last: Exception | None = None
        for address in addresses:
            remaining = None if deadline is None else max(deadline - anyio.current_time(), 0.0)
            if remaining == 0.0:
                raise httpcore.ConnectTimeout(f"connecting to {host!r} timed out")
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=remaining, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectTimeout:
                raise
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UpstreamAddressRefused("an API source never connects to a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


# Most specific first: the first match wins.
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _as_httpx(exc: Exception, request: httpx.Request) -> Exception:
    for core, mapped in _EXCEPTIONS:
        if isinstance(exc, core):
            return mapped(str(exc), request=request)
    return exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise _as_httpx(exc, self._request) from exc

    async def aclose(self) -> None:
        closer = getattr(self._stream, "aclose", None)
        if closer is not None:
            await closer()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections go through :class:`GuardedBackend`.

    HTTP/1.1 only, no proxies, TLS verified against the URL's host name.

    Args:
        internal: The source was approved as internal (see :func:`refusal`).
        ssl_context: Verification settings (default ``httpx.create_ssl_context()``: the
            certifi bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set).
        max_connections: Most connections open at once.
        max_keepalive_connections: Most idle connections kept.
        keepalive_expiry: Seconds an idle connection is kept.
        backend: The network backend (default ``GuardedBackend(internal=internal)``).

    ``handle_async_request`` raises httpx's transport errors (``ConnectTimeout``,
    ``ReadTimeout``, ``ConnectError``, ``ReadError``, ``RemoteProtocolError``, ...) and lets
    :class:`~gateway.errors.UpstreamAddressRefused` through unchanged.
    """

    def __init__(
        self,
        *,
        internal: bool,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 100,
        max_keepalive_connections: int = 20,
        keepalive_expiry: float = 5.0,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.backend = backend if backend is not None else GuardedBackend(internal=internal)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context if ssl_context is not None else httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=self.backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
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
        try:
            response = await self._pool.handle_async_request(core_request)
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise _as_httpx(exc, request) from exc
        except httpcore.UnsupportedProtocol as exc:
            raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
