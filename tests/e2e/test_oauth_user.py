"""End to end: per-user OAuth 2.1 (authorization code + PKCE), credential kind ``oauth_authorization_code``.

A real stack (``gateway serve`` with a KEK, OPA, PostgreSQL), a real authorization server
(``tests/support/oauth_server.py``, authlib; tokens live :data:`TOKEN_TTL` s) and two MCP
upstreams (``tests/support/authed_upstream.py``) that accept only the AS's JWTs for their own
audience and say whose token they saw (``whoami``):

* ``gh``: serves RFC 9728 metadata naming the AS; its credential names nothing, so the
  gateway discovers the AS (RFC 9728 -> RFC 8414) and registers itself (RFC 7591);
* ``gh2``: its credential names the endpoints and a pre-registered confidential client.

The consent step is driven programmatically, as a browser would: the connect link's
confirmation page (200, a nonce in its form and its cookie), the form's POST (302 to
``/authorize``), the AS's test-only ``approve_as=<user>`` auto-consent (302 to the callback,
with RFC 9207 ``iss``), the callback with the same cookie jar (200).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from gateway.devtools.stack import LocalStack, sample_policy_modules
from tests.e2e.helpers import client
from tests.support import authed_upstream, oauth_server, pg
from tests.support.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.anyio, pytest.mark.timeout(300)]

TOKEN_TTL = 4
INTERNAL = "internal-token-for-the-oauth-user-test"
GH2_RESOURCE = "https://gh2.example/mcp"
ACCEPT = "application/json, text/event-stream"
_LINK = re.compile(r"https?://\S+/v1/oauth/connect/[A-Za-z0-9_-]{43}")
_NONCE = re.compile(r'name="confirm" value="([A-Za-z0-9_-]{43})"')


def browser() -> httpx.Client:
    """One browser: its own cookie jar, redirects followed by hand."""
    return httpx.Client(trust_env=False, timeout=30, follow_redirects=False)


def confirm(http: httpx.Client, link: str) -> str:
    """Open the connect page and confirm it; the authorization URL it redirects to."""
    page = http.get(link)
    assert page.status_code == 200, page.text
    match = _NONCE.search(page.text)
    assert match is not None, page.text
    to_as = http.post(link, data={"confirm": match.group(1)})
    assert to_as.status_code == 302, to_as.text
    return to_as.headers["location"]


class Fleet:
    def __init__(self, stack: LocalStack, oauth: oauth_server.RunningOAuthServer, database_url: str) -> None:
        self.stack, self.oauth, self.database_url = stack, oauth, database_url
        self.upstreams: dict[str, authed_upstream.RunningUpstream] = {}
        self.credentials: dict[str, str] = {}

    def credential(self, key: str, kind: str, secret: dict[str, Any], config: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {"name": key, "kind": kind, "secret": secret, **({"config": config} if config else {})}
        self.credentials[key] = self.stack.admin("POST", "/v1/credentials", body)["id"]
        return self.credentials[key]

    def bind(self, server: str, credential: str) -> None:
        body = {"server": server, "subject": {"kind": "everyone"}, "credential_id": self.credentials[credential]}
        self.stack.admin("POST", "/v1/credential-bindings", body)

    def token(self, sub: str) -> str:
        return self.stack.idp.mint(sub, ["viewer"], self.stack.audience)

    async def call(self, sub: str, server: str) -> Any:
        async with client(self.stack, self.token(sub), mode="legacy") as c:
            return await c.call_tool(f"{server}__whoami", {})

    async def whoami(self, sub: str, server: str) -> dict[str, Any]:
        result = await self.call(sub, server)
        assert not result.is_error, result
        return json.loads(result.content[0].text)  # type: ignore[no-any-return]

    async def connect_link(self, sub: str, server: str) -> str:
        """The link of the tool error a caller who has not connected gets."""
        result = await self.call(sub, server)
        assert result.is_error, result
        text = result.content[0].text
        assert text.startswith(f"Connect your {server} account to use this tool: ")
        match = _LINK.search(text)
        assert match is not None, text
        return match.group(0)

    def authorize(self, http: httpx.Client, link: str, sub: str) -> str:
        """Confirm ``link`` in ``http`` and consent as ``sub``; the callback URL the AS sends back."""
        authorize = confirm(http, link)
        assert authorize.startswith(f"{self.oauth.url}/authorize?")
        for param in ("response_type=code", "code_challenge_method=S256", "code_challenge=", "state="):
            assert param in authorize
        back = http.get(authorize + "&approve_as=" + sub)
        assert back.status_code == 302, back.text
        callback = back.headers["location"]
        assert callback.startswith(f"{self.stack.control_url}/v1/oauth/callback/")
        return str(callback)

    def consent(self, link: str, sub: str) -> httpx.Response:
        """Drive the consent in one browser: page -> confirm -> AS /authorize (as ``sub``) -> callback."""
        with browser() as http:
            return http.get(self.authorize(http, link, sub))

    async def connect(self, sub: str, server: str) -> None:
        page = self.consent(await self.connect_link(sub, server), sub)
        assert page.status_code == 200 and "Connected" in page.text

    async def user_token_rows(self, credential: str) -> int:
        conn = await asyncpg.connect(self.database_url)
        try:
            count = await conn.fetchval(
                "SELECT count(*) FROM credential_user_tokens WHERE credential_id = $1::uuid",
                self.credentials[credential],
            )
        finally:
            await conn.close()
        return int(count)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[Fleet]:
    run_dir = tmp_path_factory.mktemp("oauth-user")
    with ExitStack() as es:
        database_url = es.enter_context(pg.throwaway_database(pg_admin_url))
        stack = es.enter_context(LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin)))
        stack.extra_env["GATEWAY_CREDENTIALS_KEK"] = base64.b64encode(os.urandom(32)).decode()
        stack.extra_env["GATEWAY_INTERNAL_TOKEN"] = INTERNAL
        oauth = es.enter_context(oauth_server.start_subprocess(run_dir, token_ttl=TOKEN_TTL))
        stack.start_gateway()
        fleet = Fleet(stack, oauth, database_url)
        port = free_port()
        gh_url = f"http://127.0.0.1:{port}/mcp"  # its resource indicator, the default one (the server's URL)
        jwks = f"{oauth.url}/jwks.json"
        for name, audience, upstream_port in (("gh", gh_url, port), ("gh2", GH2_RESOURCE, None)):
            fleet.upstreams[name] = es.enter_context(
                authed_upstream.start_subprocess(
                    run_dir,
                    ["bearer-jwt"],
                    jwks_url=jwks,
                    audience=audience,
                    issuer=oauth.url,
                    name=name,
                    port=upstream_port,
                )
            )
            stack.admin(
                "POST",
                "/v1/servers",
                {"name": name, "transport": "streamable_http", "url": fleet.upstreams[name].mcp_url},
            )
        fleet.credential("gh-dcr", "oauth_authorization_code", {})  # discovery + dynamic registration
        gh2 = {
            "client_id": "basic-client",
            "authorization_endpoint": f"{oauth.url}/authorize",
            "token_endpoint": oauth.token_endpoint,
            "resource": GH2_RESOURCE,
        }
        fleet.credential("gh-conf", "oauth_authorization_code", {"client_secret": "basic-client-secret"}, gh2)
        fleet.bind("gh", "gh-dcr")
        fleet.bind("gh2", "gh-conf")
        # Approval needs no user: each server is discovered with a client-credentials token for its audience.
        for name, audience in (("gh", gh_url), ("gh2", GH2_RESOURCE)):
            cc = {"token_url": oauth.token_endpoint, "client_id": "basic-client", "audience": audience}
            discovery = fleet.credential(
                f"{name}-cc", "oauth_client_credentials", {"client_secret": "basic-client-secret"}, cc
            )
            stack.admin(
                "POST", f"/v1/servers/{name}/approve", {"discovery_credential": discovery, "comment": "reviewed"}
            )
        stack.upload_and_approve_policy(sample_policy_modules())
        stack.wait_projection_active()
        yield fleet


async def test_a_user_who_has_not_connected_gets_a_tool_error_with_the_connect_link(fleet: Fleet) -> None:
    upstream = fleet.upstreams["gh"]
    before = len(upstream.seen())
    link = await fleet.connect_link("uma", "gh")
    assert link.startswith(f"{fleet.stack.control_url}/v1/oauth/connect/")
    assert len(upstream.seen()) == before  # never sent unauthenticated, nor with the caller's token


async def test_the_connect_page_changes_nothing_and_only_a_same_site_confirmation_uses_the_link(fleet: Fleet) -> None:
    link = await fleet.connect_link("una", "gh")
    with browser() as http:
        for _ in range(2):  # an unfurler or prefetcher opening the page does not use the link up
            page = http.get(link)
            assert page.status_code == 200 and "una" in page.text and "gh" in page.text
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        [cookie] = list(http.cookies.jar)
        assert cookie.name.startswith("gw_oauth_") and cookie.path == "/v1/oauth/"
        assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "lax"
        nonce = _NONCE.search(page.text)
        assert nonce is not None and nonce.group(1) == cookie.value
        form = {"confirm": nonce.group(1)}
        with browser() as other:  # the nonce without this browser's cookie (an auto-submitted cross-site form)
            assert other.post(link, data=form).status_code == 403
        assert http.post(link, data={"confirm": "A" * 43}).status_code == 403
        assert http.post(link, data=form, headers={"origin": "https://evil.example"}).status_code == 403
        assert http.post(link, data=form, headers={"sec-fetch-site": "cross-site"}).status_code == 403
        assert http.post(link, data=form, headers={"sec-fetch-site": "same-origin"}).status_code == 302
        for again in (http.get(link), http.post(link, data=form)):  # used up
            assert again.status_code == 404 and "text/html" in again.headers["content-type"]
        forged = http.get(link[:-4] + "AAAA")
        assert forged.status_code == 404 and "AAAA" not in forged.text
        unknown = http.get(f"{fleet.stack.control_url}/v1/oauth/callback/x", params={"state": "x" * 43, "code": "c"})
        assert unknown.status_code == 400


async def test_a_sign_in_finished_in_another_browser_links_nothing(fleet: Fleet) -> None:
    """Account-linking CSRF: the attacker starts a connect for their own gateway identity and
    has a victim finish it; the victim's upstream account must not be linked to the attacker."""
    link = await fleet.connect_link("mal", "gh")
    with browser() as attacker:
        authorize = confirm(attacker, link)
    with browser() as victim:
        back = victim.get(authorize + "&approve_as=vera")
        assert back.status_code == 302
        page = victim.get(back.headers["location"])
    assert page.status_code == 400 and "another browser" in page.text
    assert not await _has_tokens(fleet, "gh-dcr", "mal")
    result = await fleet.call("mal", "gh")
    assert result.is_error and _LINK.search(result.content[0].text)  # mal is still not connected


async def test_an_answer_without_or_with_a_foreign_iss_or_at_another_issuers_callback_is_refused(fleet: Fleet) -> None:
    """Mix-up (RFC 9700 section 4.4): the test AS advertises RFC 9207, so ``iss`` is required and
    must be its issuer, and the redirect URI is the (credential, issuer)'s own."""
    foreign = fleet.oauth.url.replace("127.0.0.1", "localhost")
    for tamper in (
        lambda url: re.sub(r"&?iss=[^&]*", "", url),
        lambda url: re.sub(r"iss=[^&]*", "iss=" + httpx.QueryParams({"i": foreign})["i"], url),
        lambda url: re.sub(r"/callback/[A-Za-z0-9_-]+", "/callback/AAAAAAAAAAAAAAAAAAAAAA", url),
    ):
        link = await fleet.connect_link("mix", "gh")
        with browser() as http:
            callback = fleet.authorize(http, link, "mix")
            assert "iss=" in callback
            page = http.get(tamper(callback))
        assert page.status_code == 400 and "another authorization server" in page.text
    assert not await _has_tokens(fleet, "gh-dcr", "mix")


async def _has_tokens(fleet: Fleet, credential: str, sub: str) -> bool:
    conn = await asyncpg.connect(fleet.database_url)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM credential_user_tokens WHERE credential_id = $1::uuid AND subject_sub = $2",
            fleet.credentials[credential],
            sub,
        )
    finally:
        await conn.close()
    return bool(count)


async def test_after_consent_the_upstream_sees_the_user_and_each_user_only_their_own(fleet: Fleet) -> None:
    await fleet.connect("uma", "gh")
    seen = await fleet.whoami("uma", "gh")
    assert seen["sub"] == "uma" and seen["aud"] == fleet.upstreams["gh"].mcp_url
    assert seen["authorization"] != fleet.token("uma")[:12]
    link = await fleet.connect_link("vic", "gh")  # uma's tokens never serve vic
    await asyncio.to_thread(fleet.consent, link, "vic")
    assert (await fleet.whoami("vic", "gh"))["sub"] == "vic"
    assert (await fleet.whoami("uma", "gh"))["sub"] == "uma"


async def test_discovery_registered_one_client_and_a_configured_client_is_used_as_is(fleet: Fleet) -> None:
    for sub in ("abe", "bea"):
        await fleet.connect(sub, "gh")
    stats = fleet.oauth.stats()
    assert len(stats["registered"]) == 1  # one registration for the credential, reused by every user
    dcr_client = stats["registered"][0]
    assert stats["issued_by_client"][dcr_client]["authorization_code"] >= 2
    assert (await fleet.whoami("abe", "gh"))["client_id"] == dcr_client
    before = fleet.oauth.issued("authorization_code", "basic-client")
    await fleet.connect("abe", "gh2")
    assert fleet.oauth.issued("authorization_code", "basic-client") == before + 1
    seen = await fleet.whoami("abe", "gh2")
    assert (seen["sub"], seen["client_id"], seen["aud"]) == ("abe", "basic-client", GH2_RESOURCE)
    assert len(fleet.oauth.stats()["registered"]) == 1


async def test_an_expired_access_token_is_refreshed_with_the_users_refresh_token(fleet: Fleet) -> None:
    await fleet.connect("cal", "gh")
    refreshed = fleet.oauth.issued("refresh_token")
    deadline = time.monotonic() + TOKEN_TTL + 2
    while time.monotonic() < deadline:  # the AS's tokens expire meanwhile: served with refreshed ones
        assert (await fleet.whoami("cal", "gh"))["sub"] == "cal"
        await asyncio.sleep(0.5)
    assert fleet.oauth.issued("refresh_token") > refreshed
    assert (await fleet.whoami("cal", "gh"))["sub"] == "cal"


async def test_an_access_token_the_upstream_refuses_is_replaced_by_a_refreshed_one(fleet: Fleet) -> None:
    await fleet.connect("ren", "gh")
    assert (await fleet.whoami("ren", "gh"))["sub"] == "ren"
    refreshed = fleet.oauth.issued("refresh_token")
    upstream = fleet.upstreams["gh"]
    upstream.revoke()  # every token it has seen now gets 401, as if the AS had revoked them
    try:
        seen = await fleet.whoami("ren", "gh")  # the 401 forces a refresh; the call is retried once
        assert seen["sub"] == "ren"
        assert fleet.oauth.issued("refresh_token") > refreshed
    finally:
        upstream.reset()


async def test_a_refresh_the_as_refuses_sends_the_user_to_connect_again(fleet: Fleet) -> None:
    await fleet.connect("wil", "gh")
    assert (await fleet.whoami("wil", "gh"))["sub"] == "wil"
    fleet.oauth.admin("revoke", {"user": "wil"})  # revoked at the AS: the next refresh is refused
    deadline = time.monotonic() + TOKEN_TTL + 10
    while True:
        result = await fleet.call("wil", "gh")
        if result.is_error:
            break
        assert time.monotonic() < deadline, "a refused refresh token kept being used"
        await asyncio.sleep(0.5)
    assert _LINK.search(result.content[0].text)


def _rpc_events(resp: httpx.Response) -> list[dict[str, Any]]:
    if resp.headers["content-type"].startswith("text/event-stream"):
        return [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ") and line[6:]]
    return [resp.json()]


def test_a_client_with_url_elicitation_gets_the_url_elicitation_required_error(fleet: Fleet) -> None:
    url = f"{fleet.stack.data_url}/mcp"
    headers = {"authorization": f"Bearer {fleet.token('xia')}", "accept": ACCEPT}
    init = {
        "protocolVersion": "2025-11-25",
        "capabilities": {"elicitation": {"form": {}, "url": {}}},
        "clientInfo": {"name": "elicit", "version": "1"},
    }
    with httpx.Client(trust_env=False, timeout=30) as http:
        resp = http.post(url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}, headers=headers)
        assert resp.status_code == 200, resp.text
        headers |= {"mcp-session-id": resp.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "gh__whoami", "arguments": {}}}
        [answer] = [m for m in _rpc_events(http.post(url, json=call, headers=headers)) if m.get("id") == 1]
    assert answer["error"]["code"] == -32042
    [elicitation] = answer["error"]["data"]["elicitations"]
    assert elicitation["mode"] == "url" and elicitation["elicitationId"] and elicitation["message"]
    assert _LINK.fullmatch(elicitation["url"])


def test_a_2026_client_gets_the_link_in_a_tool_error(fleet: Fleet) -> None:
    envelope = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}},
        "io.modelcontextprotocol/clientInfo": {"name": "modern", "version": "1"},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "gh__whoami", "arguments": {}, "_meta": envelope},
    }
    headers = {
        "authorization": f"Bearer {fleet.token('yan')}",
        "accept": ACCEPT,
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "gh__whoami",
    }
    with httpx.Client(trust_env=False, timeout=30) as http:
        [answer] = [m for m in _rpc_events(http.post(f"{fleet.stack.data_url}/mcp", json=body, headers=headers))]
    assert answer["result"]["isError"] is True
    assert _LINK.search(answer["result"]["content"][0]["text"])


async def test_no_user_token_appears_in_logs_or_api_answers(fleet: Fleet) -> None:
    await fleet.connect("dee", "gh2")
    assert (await fleet.whoami("dee", "gh2"))["sub"] == "dee"
    with httpx.Client(trust_env=False, timeout=30) as http:
        issued = http.get(f"{fleet.oauth.url}/_tokens").json()
        tokens = set(issued["access"]) | set(issued["refresh"])
        assert issued["refresh"] and issued["access"]
        texts: dict[str, str] = {}
        skip = {f"{name}.log" for name in fleet.upstreams} | {"oauth-server.log"}
        for path in sorted(fleet.stack.run_dir.glob("*.log")):
            if path.name not in skip:
                texts[path.name] = path.read_text(errors="replace")
        assert texts, "no gateway log found"
        admin = fleet.stack.admin_headers
        for path in ("/v1/credentials", "/v1/credential-bindings", "/v1/projection", "/v1/servers"):
            texts[path] = http.get(f"{fleet.stack.control_url}{path}", headers=admin).text
        for credential in fleet.credentials.values():
            texts[credential] = http.get(
                f"{fleet.stack.control_url}/v1/credentials/{credential}/uses", headers=admin
            ).text
        decisions = http.get(f"{fleet.stack.control_url}/v1/audit/decisions", params={"limit": 500}, headers=admin)
        texts["decisions"] = decisions.text
    for token in tokens:
        for where, text in texts.items():
            assert token not in text, f"an issued token appears in {where}"


async def test_revoking_the_credential_refuses_the_next_call_and_deletes_the_users_tokens(fleet: Fleet) -> None:
    await fleet.connect("zed", "gh")
    assert (await fleet.whoami("zed", "gh"))["sub"] == "zed"
    assert await fleet.user_token_rows("gh-dcr") >= 1
    fleet.stack.admin("DELETE", f"/v1/credentials/{fleet.credentials['gh-dcr']}", expect=204)
    revoked = time.monotonic()
    while True:
        async with client(fleet.stack, fleet.token("zed"), mode="legacy") as c:
            try:
                result = await c.call_tool("gh__whoami", {})
                category = "tool_error" if result.is_error else None
            except MCPError as exc:
                category = exc.error.data["category"]
        if category is not None:
            break
        assert time.monotonic() - revoked < 5, "the revocation did not take effect within 5 s"
    assert category == "credential_required"
    assert await fleet.user_token_rows("gh-dcr") == 0
