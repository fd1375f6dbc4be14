"""Discovery of an upstream's authorization server (RFC 9728, RFC 8414): well-known URLs and
metadata checks (gateway.controlplane.oauth_users), and discovery against the real test AS."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.controlplane.egress import allows_private
from gateway.controlplane.oauth_users import (
    AuthServer,
    DiscoveryError,
    authorization_server_urls,
    discover,
    parse_authorization_server,
    parse_protected_resource,
    protected_resource_urls,
    register_client,
)
from tests.support import authed_upstream, oauth_server

ISSUER = "https://as.example.com"


def _metadata(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "registration_endpoint": f"{ISSUER}/register",
        "code_challenge_methods_supported": ["S256"],
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def test_protected_resource_metadata_is_looked_up_path_inserted_first_then_at_the_root() -> None:
    assert protected_resource_urls("https://mcp.example.com/public/mcp") == [
        "https://mcp.example.com/.well-known/oauth-protected-resource/public/mcp",
        "https://mcp.example.com/.well-known/oauth-protected-resource",
    ]
    assert protected_resource_urls("https://mcp.example.com/") == [
        "https://mcp.example.com/.well-known/oauth-protected-resource"
    ]


def test_authorization_server_metadata_urls_follow_rfc_8414_then_oidc() -> None:
    assert authorization_server_urls("https://as.example.com/tenant1") == [
        "https://as.example.com/.well-known/oauth-authorization-server/tenant1",
        "https://as.example.com/.well-known/openid-configuration/tenant1",
        "https://as.example.com/tenant1/.well-known/openid-configuration",
    ]
    assert authorization_server_urls("https://as.example.com") == [
        "https://as.example.com/.well-known/oauth-authorization-server",
        "https://as.example.com/.well-known/openid-configuration",
    ]


def test_the_first_authorization_server_is_taken_and_must_be_https() -> None:
    doc = {"resource": "https://mcp.example.com", "authorization_servers": [ISSUER, "https://other.example.com"]}
    assert parse_protected_resource(doc) == ISSUER
    assert parse_protected_resource({"authorization_servers": ["http://127.0.0.1:9000"]}) == "http://127.0.0.1:9000"
    for bad in ({}, {"authorization_servers": []}, {"authorization_servers": ["http://as.example.com"]}, []):
        with pytest.raises(DiscoveryError):
            parse_protected_resource(bad)


def test_metadata_of_another_issuer_is_refused() -> None:
    assert parse_authorization_server(_metadata(), ISSUER) == AuthServer(
        ISSUER, f"{ISSUER}/authorize", f"{ISSUER}/token", f"{ISSUER}/register"
    )
    with pytest.raises(DiscoveryError, match="another issuer"):
        parse_authorization_server(_metadata(issuer="https://evil.example.com"), ISSUER)
    with pytest.raises(DiscoveryError, match="another issuer"):
        parse_authorization_server(_metadata(issuer=ISSUER + "/"), ISSUER)


def test_metadata_without_s256_or_with_a_plain_http_endpoint_is_refused() -> None:
    assert parse_authorization_server(_metadata(code_challenge_methods_supported=None), ISSUER).issuer == ISSUER
    with pytest.raises(DiscoveryError, match="S256"):
        parse_authorization_server(_metadata(code_challenge_methods_supported=["plain"]), ISSUER)
    with pytest.raises(DiscoveryError, match="token_endpoint"):
        parse_authorization_server(_metadata(token_endpoint="http://as.example.com/token"), ISSUER)
    with pytest.raises(DiscoveryError, match="authorization_endpoint"):
        parse_authorization_server(_metadata(authorization_endpoint=None), ISSUER)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real AS and an upstream whose RFC 9728 metadata names it: (AS url, upstream MCP url)."""
    run_dir = tmp_path_factory.mktemp("discovery")
    with oauth_server.start_subprocess(run_dir) as oauth:
        spec = {"jwks_url": f"{oauth.url}/jwks.json", "audience": "x", "issuer": oauth.url}
        with authed_upstream.start_subprocess(run_dir, ["bearer-jwt"], **spec) as upstream:
            yield oauth.url, upstream.mcp_url


@pytest.mark.anyio
async def test_discovery_finds_the_real_authorization_server_and_registers_a_public_client(
    real: tuple[str, str],
) -> None:
    as_url, mcp_url = real
    assert allows_private(mcp_url)  # a loopback server: what its metadata names may be too
    found = await discover(mcp_url, allow_private=True)
    assert found == AuthServer(
        as_url, f"{as_url}/authorize", f"{as_url}/token", f"{as_url}/register", iss_required=True
    )
    client = await register_client(found, "http://127.0.0.1:1/v1/oauth/callback/k", allow_private=True)
    assert client.client_id and client.client_secret is None and client.auth_method == "none"


@pytest.mark.anyio
async def test_without_allow_private_discovery_and_registration_reach_no_loopback_address(
    real: tuple[str, str],
) -> None:
    as_url, mcp_url = real
    before = await _as_requests(as_url)
    for url in (mcp_url, mcp_url.replace("127.0.0.1", "localhost")):  # a literal, and a name resolving there
        with pytest.raises(DiscoveryError, match="non-public address"):
            await discover(url)
    server = AuthServer(as_url, f"{as_url}/authorize", f"{as_url}/token", f"{as_url}/register")
    with pytest.raises(DiscoveryError, match="non-public address"):
        await register_client(server, "http://127.0.0.1:1/v1/oauth/callback/k")
    assert await _as_requests(as_url) == before  # refused before connecting


async def _as_requests(as_url: str) -> Any:
    async with httpx.AsyncClient(trust_env=False) as http:
        stats = (await http.get(f"{as_url}/_stats")).json()
    return stats["registered"]


@pytest.mark.anyio
async def test_discovery_of_a_server_without_metadata_fails_closed(real: tuple[str, str]) -> None:
    as_url, _ = real
    with pytest.raises(DiscoveryError, match="RFC 9728"):
        await discover(f"{as_url}/mcp", allow_private=True)  # the AS itself publishes no protected-resource metadata
