"""Outbound HTTP of the per-user OAuth flow to hosts the gateway discovered: public addresses only.

Discovery (RFC 9728, RFC 8414) follows URLs an upstream's metadata names, so without a guard a
hostile upstream could point the control plane at ``http://169.254.169.254/`` or an internal
admin service. :class:`EgressTransport` resolves each request's host itself, refuses it when
any address it resolves to is not globally routable (loopback, RFC 1918/4193 private,
link-local, CGNAT, multicast, reserved, unspecified; IPv4-mapped IPv6 checked as IPv4), and
then connects to the address it checked: the request's URL is rewritten to that IP literal,
with the original ``Host`` header and, for ``https``, the original name as TLS SNI and
certificate name (httpx's ``sni_hostname`` request extension), so DNS cannot answer
differently between the check and the connection (DNS rebinding).

The rule (:func:`allows_private`): discovered endpoints may reach non-public addresses only
when the registered server's URL itself names one, literally (an IP literal that is not
public, or ``localhost``): an internal deployment an admin registered. Never decided from
live DNS, which a hostile upstream controls. Endpoints an admin configured on the credential
are not guarded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import httpx2

from gateway.controlplane.oauth_tokens import BoundedTransport
from gateway.errors import CredentialUnavailable

__all__ = ["EgressRefused", "EgressTransport", "allows_private", "is_public", "public_addresses"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EgressRefused(CredentialUnavailable):
    """A discovered endpoint resolves to an address the gateway must not reach."""


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries: IPv4-mapped, NAT64 (RFC 6052, RFC 8215),
    6to4 (RFC 3056), Teredo (RFC 4380, the client's), IPv4-compatible (deprecated)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in net for net in _NAT64) or address in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: IPAddress) -> bool:
    """True for a globally routable unicast address; an IPv6 address carrying an IPv4 one
    (mapped, NAT64, 6to4, Teredo, compatible) is judged by both, and site-local is refused."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None and not is_public(embedded):
            return False
        if address.ipv4_mapped is not None:
            return True
    return address.is_global and not address.is_multicast


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


async def _resolve(host: str, port: int) -> list[IPAddress]:
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise EgressRefused(f"{host} does not resolve") from None
    found = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not found:
        raise EgressRefused(f"{host} does not resolve")
    return found


async def public_addresses(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to, all public.

    Raises:
        EgressRefused: One of them is not public (named in the message by host only), or the
            name does not resolve.
    """
    found = await _resolve(host, port)
    if not all(is_public(a) for a in found):
        raise EgressRefused(f"{host} resolves to a non-public address; discovered endpoints must be public")
    return found


def allows_private(server_url: str | None) -> bool:
    """True when the registered server's URL names a non-public address literally (an IP
    literal that is not public, or ``localhost``): then what its metadata names may be too.
    Pure: never a DNS lookup (a hostile upstream's DNS could answer privately just then)."""
    try:
        host = urlsplit(server_url or "").hostname
    except ValueError:
        return False
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    literal = _literal(host)
    return literal is not None and not is_public(literal)


class EgressTransport(BoundedTransport):
    """:class:`~gateway.controlplane.oauth_tokens.BoundedTransport` (answers capped at
    ``limit`` bytes) that connects only to public addresses unless ``allow_private``.

    Raises (from a request): :class:`EgressRefused`.
    """

    def __init__(self, limit: int, *, allow_private: bool) -> None:
        super().__init__(limit)
        # No keep-alive: a pooled connection is keyed by the IP, and must not carry a request
        # for another name (SNI and Host of the first) that resolves to the same address.
        self._inner = httpx2.AsyncHTTPTransport(trust_env=False, limits=httpx2.Limits(max_keepalive_connections=0))
        self._allow_private = allow_private

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not self._allow_private:
            host = request.url.host
            port = request.url.port or (443 if request.url.scheme == "https" else 80)
            address = (await public_addresses(host, port))[0]
            if _literal(host) is None:
                request.url = request.url.copy_with(host=str(address))
                if request.url.scheme == "https":
                    request.extensions = {**request.extensions, "sni_hostname": host}
        return await super().handle_async_request(request)
