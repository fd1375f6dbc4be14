"""The control plane's OAuth token client (gateway/controlplane/oauth_tokens.py) against the
real test authorization server (tests/support/oauth_server.py, a subprocess on loopback):
both client authentication methods, caching, expiry, single flight, token exchange,
secrecy of errors and logs, invalidation, bounds; and the authorization code flow with PKCE
driven through authlib's client, groundwork for the per-user flow."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client

from gateway.controlplane.oauth_tokens import Token, TokenSource
from gateway.errors import CredentialUnavailable, GatewayError
from tests.credentials.helpers import canary, encodings
from tests.support.oauth_server import DEFAULT_CLIENTS, RunningOAuthServer, TestIdP, start_subprocess

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

BASIC, POST = DEFAULT_CLIENTS
AUDIENCE = "https://upstream.test"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> TestIdP:
    return TestIdP(tmp_path_factory.mktemp("idp") / "jwks.json")


@pytest.fixture(scope="module")
def server(idp: TestIdP, log_dir: Path) -> Iterator[RunningOAuthServer]:
    with start_subprocess(log_dir / "test_oauth_tokens", subject_jwks=idp.jwks_path) as running:
        yield running


@pytest.fixture(scope="module")
def short_server(log_dir: Path) -> Iterator[RunningOAuthServer]:
    """Access tokens live 2 s."""
    with start_subprocess(log_dir / "test_oauth_tokens", token_ttl=2, name="oauth-server-short") as running:
        yield running


def _cc(server: RunningOAuthServer, client: Any = BASIC, **extra: Any) -> dict[str, Any]:
    return {
        "token_url": server.token_endpoint,
        "client_id": client.client_id,
        "auth_method": client.auth_method,
        **extra,
    }


def _claims(server: RunningOAuthServer, token: str, audience: str | None = None) -> dict[str, Any]:
    keys = jwt.PyJWKSet.from_dict(httpx.get(f"{server.url}/jwks.json", trust_env=False).json())
    options = {"verify_aud": audience is not None}
    claims: dict[str, Any] = jwt.decode(
        token, keys.keys[0].key, algorithms=["RS256"], audience=audience, issuer=server.url, options=options
    )
    return claims


def _cid() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------- client credentials
@pytest.mark.parametrize("client", [BASIC, POST], ids=["client_secret_basic", "client_secret_post"])
async def test_client_credentials_with_each_auth_method(server: RunningOAuthServer, client: Any) -> None:
    source = TokenSource()
    before = server.issued("client_credentials", client.client_id)
    config = _cc(server, client, scope="read write", audience=AUDIENCE)
    token = await source.client_credentials(_cid(), config, client.client_secret)
    await source.aclose()
    assert server.issued("client_credentials", client.client_id) == before + 1
    claims = _claims(server, token.access_token, AUDIENCE)
    assert claims["sub"] == claims["client_id"] == client.client_id and claims["scope"] == "read write"
    assert token.token_type == "Bearer" and token.issued_token_type is None
    assert abs(token.expires_at - (time.time() + 300)) < 5
    assert token.access_token not in repr(token)


async def test_cached_until_expiry_and_per_version(server: RunningOAuthServer) -> None:
    source, cid, config = TokenSource(), _cid(), _cc(server)
    before = server.issued("client_credentials")
    tokens = {
        (await source.client_credentials(cid, config, BASIC.client_secret, version="v1")).access_token
        for _ in range(20)
    }
    assert len(tokens) == 1 and server.issued("client_credentials") == before + 1
    assert source.stats()["hits"] == 19
    rotated = await source.client_credentials(cid, config, BASIC.client_secret, version="v2")  # a rotation refetches
    assert rotated.access_token not in tokens and server.issued("client_credentials") == before + 2
    await source.aclose()


async def test_refetched_after_expiry(short_server: RunningOAuthServer) -> None:
    source, cid, config = TokenSource(), _cid(), _cc(short_server)
    before = short_server.issued("client_credentials")
    first = await source.client_credentials(cid, config, BASIC.client_secret)
    started = time.monotonic()
    while True:  # poll until the cached token is replaced
        token = await source.client_credentials(cid, config, BASIC.client_secret)
        if token.access_token != first.access_token:
            break
        assert time.monotonic() - started < 10, "the token was never refreshed"
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    # held until expires_at - skew (for 2 s: MIN_LEFT, at most half the lifetime = 1 s), then one new token
    assert 0.8 <= elapsed <= 2.0
    assert short_server.issued("client_credentials") == before + 2
    assert token.expires_at > first.expires_at
    await source.aclose()


async def test_single_flight(server: RunningOAuthServer) -> None:
    source, cid, config = TokenSource(), _cid(), _cc(server)
    before = server.issued("client_credentials")
    tokens = await asyncio.gather(*(source.client_credentials(cid, config, BASIC.client_secret) for _ in range(50)))
    assert len({t.access_token for t in tokens}) == 1
    assert server.issued("client_credentials") == before + 1

    requests_before, bad = server.stats()["token_requests"], _cid()
    failures = await asyncio.gather(
        *(source.client_credentials(bad, config, "wrong") for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(f, CredentialUnavailable) for f in failures)
    assert server.stats()["token_requests"] == requests_before + 1  # failures are shared, not cached
    with pytest.raises(CredentialUnavailable):
        await source.client_credentials(bad, config, "wrong")
    assert server.stats()["token_requests"] == requests_before + 2
    await source.aclose()


async def test_bad_secret_is_a_typed_error_without_secrets(
    server: RunningOAuthServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = canary("client-secret")
    source, cid = TokenSource(), _cid()
    for client in (BASIC, POST):
        with pytest.raises(CredentialUnavailable) as raised:
            await source.client_credentials(cid, _cc(server, client), secret)
        exc = raised.value
        assert isinstance(exc, GatewayError) and exc.category == "credential_unavailable" and exc.status_code == 502
        assert exc.oauth_error == "invalid_client"
        assert str(exc) == f"credential {cid}: token endpoint 127.0.0.1 refused: invalid_client"
        assert exc.__cause__ is None and exc.__suppress_context__
        for form in encodings(secret):
            assert form.decode() not in str(exc) and form.decode() not in repr(exc)
    good = await source.client_credentials(_cid(), _cc(server, POST), POST.client_secret)
    await source.aclose()
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "refused: invalid_client" in logged  # the capture works
    for value in (secret, POST.client_secret, BASIC.client_secret, good.access_token):
        for form in encodings(value):
            assert form.decode() not in logged


async def test_invalidate_and_a_revoked_client(server: RunningOAuthServer) -> None:
    source, cid, config = TokenSource(), _cid(), _cc(server, POST)
    first = await source.client_credentials(cid, config, POST.client_secret)
    assert (await source.client_credentials(cid, config, POST.client_secret)) == first
    assert source.invalidate(cid) == 1 and source.invalidate(cid) == 0
    second = await source.client_credentials(cid, config, POST.client_secret)
    assert second.access_token != first.access_token
    server.admin("revoke", {"client_id": POST.client_id})
    try:
        assert (await source.client_credentials(cid, config, POST.client_secret)) == second  # still cached
        source.invalidate(cid)
        with pytest.raises(CredentialUnavailable) as raised:
            await source.client_credentials(cid, config, POST.client_secret)
        assert raised.value.oauth_error == "invalid_client"
    finally:
        server.admin("restore", {"client_id": POST.client_id})
    await source.aclose()


async def test_a_fetch_under_way_when_invalidated_is_not_cached(server: RunningOAuthServer) -> None:
    source, cid, config = TokenSource(), _cid(), _cc(server)
    before = server.issued("client_credentials")
    pending = asyncio.ensure_future(source.client_credentials(cid, config, BASIC.client_secret))
    await asyncio.sleep(0)  # the fetch has started and waits on the network
    assert source.stats()["inflight"] == 1
    source.invalidate(cid)
    first = await pending
    second = await source.client_credentials(cid, config, BASIC.client_secret)
    assert second.access_token != first.access_token and server.issued("client_credentials") == before + 2
    await source.aclose()


async def test_cache_is_a_bounded_lru(server: RunningOAuthServer) -> None:
    source, config = TokenSource(max_entries=2), _cc(server)
    ids = [_cid() for _ in range(3)]
    before = server.issued("client_credentials")
    for cid in (ids[0], ids[1], ids[0], ids[2]):  # ids[0] used again: ids[1] is the oldest
        await source.client_credentials(cid, config, BASIC.client_secret)
    assert source.stats()["entries"] == 2 and server.issued("client_credentials") == before + 3
    await source.client_credentials(ids[0], config, BASIC.client_secret)
    assert server.issued("client_credentials") == before + 3
    await source.client_credentials(ids[1], config, BASIC.client_secret)
    assert server.issued("client_credentials") == before + 4
    await source.aclose()


# ---------------------------------------------------------------- token exchange
async def test_token_exchange_keeps_the_callers_identity(server: RunningOAuthServer, idp: TestIdP) -> None:
    source, cid = TokenSource(), _cid()
    config = _cc(server, audience=AUDIENCE, scope="tools")
    before = server.issued("urn:ietf:params:oauth:grant-type:token-exchange")
    alice = idp.token("alice", ttl=120)
    token = await source.token_exchange(cid, config, BASIC.client_secret, alice)
    claims = _claims(server, token.access_token, AUDIENCE)
    assert claims["sub"] == "alice" and claims["act"] == {"sub": BASIC.client_id} and claims["scope"] == "tools"
    assert token.issued_token_type == "urn:ietf:params:oauth:token-type:access_token"
    # the AS gave 300 s, the subject token only 120: the answer ends with the subject
    assert token.expires_at == jwt.decode(alice, options={"verify_signature": False})["exp"]
    assert (await source.token_exchange(cid, config, BASIC.client_secret, alice)) == token  # cached per subject
    bob = await source.token_exchange(cid, config, BASIC.client_secret, idp.token("bob"))
    assert _claims(server, bob.access_token)["sub"] == "bob"
    assert server.issued("urn:ietf:params:oauth:grant-type:token-exchange") == before + 2
    await source.aclose()


async def test_token_exchange_cache_ends_with_the_subject_token(server: RunningOAuthServer, idp: TestIdP) -> None:
    offset = 0.0
    source = TokenSource(clock=lambda: time.time() + offset)
    cid, config = _cid(), _cc(server, audience=AUDIENCE)
    subject = idp.token("carol", ttl=60)
    before = server.issued("urn:ietf:params:oauth:grant-type:token-exchange")
    await source.token_exchange(cid, config, BASIC.client_secret, subject)
    offset = 50.0  # skew = min(30 s, 10 % of 60 s) = 6 s: still fresh
    await source.token_exchange(cid, config, BASIC.client_secret, subject)
    assert server.issued("urn:ietf:params:oauth:grant-type:token-exchange") == before + 1
    offset = 55.0  # past exp - skew of the subject token, though the AS's token lives 300 s
    await source.token_exchange(cid, config, BASIC.client_secret, subject)
    assert server.issued("urn:ietf:params:oauth:grant-type:token-exchange") == before + 2
    await source.aclose()


async def test_token_exchange_refused_subject(server: RunningOAuthServer, tmp_path: Path) -> None:
    stranger = TestIdP(tmp_path / "stranger.json")
    source = TokenSource()
    with pytest.raises(CredentialUnavailable) as raised:
        await source.token_exchange(_cid(), _cc(server), BASIC.client_secret, stranger.token("mallory"))
    assert raised.value.oauth_error == "invalid_request"
    await source.aclose()


# ---------------------------------------------------------------- misbehaving endpoints
class _Misbehaving(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length", "0")))
        path = self.path
        if path == "/bigstream":  # no Content-Length: read until the connection closes (HTTP/1.0)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"access_token": "a" * 100_000}).encode())
            return
        if path == "/slow":
            time.sleep(2)
        status, body, headers = {
            "/redirect": (302, b"", {"Location": "http://127.0.0.1:9/token"}),
            "/big": (200, json.dumps({"access_token": "a" * 100_000, "token_type": "Bearer"}).encode(), {}),
            "/html": (200, b"<html>hello</html>", {"Content-Type": "text/html"}),
            "/down": (503, b"busy", {}),
            "/notoken": (200, b'{"token_type": "Bearer"}', {}),
            "/badtoken": (200, b'{"access_token": "two words", "token_type": "Bearer"}', {}),
            "/noexpiry": (200, b'{"access_token": "abc", "token_type": "Bearer"}', {}),
            "/slow": (200, b'{"access_token": "abc"}', {}),
        }[path]
        self.send_response(status)
        headers.setdefault("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/redirect", "answered HTTP 302"),
        ("/big", "answered more than 65536 bytes"),
        ("/bigstream", "answered more than 65536 bytes"),
        ("/html", "answered something that is not a token"),
        ("/down", "answered HTTP 503"),
        ("/notoken", "answered no usable access_token"),
        ("/badtoken", "answered no usable access_token"),
        ("/slow", "did not answer within 0.5 s"),
    ],
)
async def test_bad_answers_are_credential_unavailable(misbehaving: str, path: str, says: str) -> None:
    source = TokenSource(timeout=0.5)
    config = {"token_url": misbehaving + path, "client_id": "c"}
    with pytest.raises(CredentialUnavailable) as raised:
        await source.client_credentials("cred-1", config, "s3cret")
    assert str(raised.value) == f"credential cred-1: token endpoint 127.0.0.1 {says}"
    await source.aclose()


async def test_no_expires_in_means_the_default_lifetime(misbehaving: str) -> None:
    source = TokenSource()
    token = await source.client_credentials("cred-2", {"token_url": misbehaving + "/noexpiry", "client_id": "c"}, "s")
    assert token == Token("abc", token.expires_at, "Bearer") and 55 <= token.expires_at - time.time() <= 60
    await source.aclose()


async def test_unreachable_endpoint(misbehaving: str) -> None:
    from tests.support.ports import free_port

    source = TokenSource()
    with pytest.raises(CredentialUnavailable, match=r"token endpoint 127\.0\.0\.1 unreachable \(ConnectError\)"):
        await source.client_credentials(
            "cred-3", {"token_url": f"http://127.0.0.1:{free_port()}/t", "client_id": "c"}, "s"
        )
    await source.aclose()


# ---------------------------------------------------------------- authorization code + PKCE (authlib's client)
async def test_authorization_code_with_pkce_through_authlibs_client(server: RunningOAuthServer) -> None:
    redirect = "http://127.0.0.1:9/callback"
    verifier = "v" * 20 + uuid.uuid4().hex + uuid.uuid4().hex
    async with AsyncOAuth2Client(
        client_id=BASIC.client_id,
        client_secret=BASIC.client_secret,
        token_endpoint_auth_method="client_secret_basic",
        redirect_uri=redirect,
        scope="repo",
        code_challenge_method="S256",
        trust_env=False,
    ) as client:
        url, state = client.create_authorization_url(f"{server.url}/authorize", code_verifier=verifier)
        assert "code_challenge=" in url and "code_challenge_method=S256" in url
        async with httpx.AsyncClient(trust_env=False) as browser:  # the user approves (test-only hook)
            consent = await browser.get(url + "&approve_as=alice")
        assert consent.status_code == 302
        location = consent.headers["location"]
        assert location.startswith(redirect) and urlsplit(location).query
        token = await client.fetch_token(
            server.token_endpoint, authorization_response=location, code_verifier=verifier, state=state
        )
        assert _claims(server, token["access_token"])["sub"] == "alice"
        first_refresh = token["refresh_token"]
        refreshed = await client.refresh_token(server.token_endpoint, refresh_token=first_refresh)
        assert refreshed["refresh_token"] != first_refresh  # rotated
        assert _claims(server, refreshed["access_token"])["sub"] == "alice"
