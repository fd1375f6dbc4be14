"""The egress guard of the per-user OAuth flow (gateway.controlplane.egress): which addresses
are public, and that names are judged by every address they resolve to."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.controlplane.egress import EgressRefused, allows_private, is_public, public_addresses


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "ff02::1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_global_unicast_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.anyio
async def test_a_name_is_judged_by_what_it_resolves_to_and_literals_as_they_are() -> None:
    for host in ("localhost", "127.0.0.1", "[::1]", "169.254.169.254"):
        with pytest.raises(EgressRefused, match="non-public"):
            await public_addresses(host, 443)
    assert await public_addresses("8.8.8.8", 443) == [ipaddress.ip_address("8.8.8.8")]
    with pytest.raises(EgressRefused, match="does not resolve"):
        await public_addresses("no-such-host.invalid", 443)


@pytest.mark.anyio
async def test_a_server_on_a_private_address_allows_private_discovery() -> None:
    assert await allows_private("http://127.0.0.1:9/mcp")
    assert await allows_private("http://10.0.0.5/mcp")
    assert not await allows_private("https://8.8.8.8/mcp")
    assert not await allows_private(None)
    assert not await allows_private("https://no-such-host.invalid/mcp")
