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
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::a00:1",  # local-use NAT64 of 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo whose client is 10.0.0.1
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "fec0::1",  # site-local
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


def test_only_a_server_url_naming_a_private_address_literally_allows_private_discovery() -> None:
    assert allows_private("http://127.0.0.1:9/mcp")
    assert allows_private("http://10.0.0.5/mcp")
    assert allows_private("http://[::1]:9/mcp") and allows_private("http://localhost:9/mcp")
    assert not allows_private("https://8.8.8.8/mcp")
    assert not allows_private(None)
    # A name is never resolved for this: an upstream's DNS could answer privately just then.
    assert not allows_private("https://no-such-host.invalid/mcp")
    assert not allows_private("http://localtest.me/mcp")  # resolves to 127.0.0.1 publicly
