"""Tests for gateway.jwtauth (also gateway.dataplane.auth): bearer JWT verification against a JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import types
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest

import gateway.jwtauth as auth_module
from gateway.config import JwtConfig
from gateway.devtools.idp import DevIdentityProvider
from gateway.errors import AuthenticationFailed
from gateway.jwtauth import JwtVerifier, bearer_token
from gateway.policy.input import Subject

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.test.invalid"
AUDIENCE = "https://gateway.test.invalid/mcp"
OTHER_AUDIENCE = "https://other.test.invalid/mcp"

MakeVerifier = Callable[..., JwtVerifier]


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> DevIdentityProvider:
    return DevIdentityProvider.create(tmp_path_factory.mktemp("idp"), ISSUER)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def make_verifier(http: httpx.AsyncClient) -> MakeVerifier:
    def _make(idp: DevIdentityProvider, **overrides: Any) -> JwtVerifier:
        config = JwtConfig(**{"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": idp.jwks_url, **overrides})
        return JwtVerifier(config, http)

    return _make


@pytest.fixture
def verifier(idp: DevIdentityProvider, make_verifier: MakeVerifier) -> JwtVerifier:
    return make_verifier(idp)


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count full verifications (jwt.decode) to tell cache hits from misses."""
    calls: list[str] = []
    real_decode = jwt.decode

    def spy(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(auth_module.jwt, "decode", spy)
    return calls


async def _rejected(verifier: JwtVerifier, token: str, **kwargs: Any) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as exc_info:
        await verifier.verify(token, **kwargs)
    assert exc_info.value.category == "unauthenticated"
    return exc_info.value


async def test_a_valid_token_yields_its_subject(idp: DevIdentityProvider, verifier: JwtVerifier) -> None:
    token = idp.mint("alice", ["viewer", "operator"], AUDIENCE, scope="mcp:tools mcp:read", client_id="agent-1")

    subject = await verifier.verify(token)

    assert isinstance(subject, Subject)
    assert (subject.sub, subject.issuer) == ("alice", ISSUER)
    assert subject.roles == ("viewer", "operator")
    assert subject.scopes == ("mcp:tools", "mcp:read")
    assert subject.client_id == "agent-1"
    assert subject.claims["aud"] == AUDIENCE


@pytest.mark.parametrize(
    ("mint_kwargs", "expected"),
    [
        pytest.param({"client_id": None}, None, id="no-client-id"),
        pytest.param({"client_id": None, "extra_claims": {"azp": "azp-agent"}}, "azp-agent", id="azp-fallback"),
        pytest.param({"client_id": None, "extra_claims": {"azp": 5}}, None, id="non-string-azp"),
    ],
)
async def test_client_id_comes_from_client_id_or_azp(
    idp: DevIdentityProvider, verifier: JwtVerifier, mint_kwargs: dict[str, Any], expected: str | None
) -> None:
    subject = await verifier.verify(idp.mint("alice", [], AUDIENCE, **mint_kwargs))

    assert subject.client_id == expected


@pytest.mark.parametrize(
    ("extra_claims", "roles", "scopes"),
    [
        pytest.param({"roles": "viewer operator"}, ("viewer", "operator"), ("mcp:tools",), id="roles-as-string"),
        pytest.param({"scope": ["a", "b"]}, ("viewer",), ("a", "b"), id="scope-as-list"),
        pytest.param({"scope": ""}, ("viewer",), (), id="empty-scope"),
    ],
)
async def test_roles_and_scopes_accept_strings_and_lists(
    idp: DevIdentityProvider,
    verifier: JwtVerifier,
    extra_claims: dict[str, Any],
    roles: tuple[str, ...],
    scopes: tuple[str, ...],
) -> None:
    subject = await verifier.verify(idp.mint("alice", ["viewer"], AUDIENCE, extra_claims=extra_claims))

    assert (subject.roles, subject.scopes) == (roles, scopes)


async def test_roles_come_from_the_configured_claim(idp: DevIdentityProvider, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(idp, roles_claim="groups")

    subject = await verifier.verify(idp.mint("alice", ["viewer"], AUDIENCE, extra_claims={"groups": ["admins"]}))

    assert subject.roles == ("admins",)


@pytest.mark.parametrize(
    "mint_kwargs",
    [
        pytest.param({"extra_claims": {"iss": "https://evil.invalid"}}, id="wrong-issuer"),
        pytest.param({"audience": OTHER_AUDIENCE}, id="wrong-audience"),
        pytest.param({"ttl_seconds": -3600}, id="expired"),
        pytest.param({"not_before": int(time.time()) + 3600}, id="not-yet-valid"),
        pytest.param({"omit_claims": ["sub"]}, id="missing-sub"),
        pytest.param({"omit_claims": ["exp"]}, id="missing-exp"),
        pytest.param({"omit_claims": ["iss"]}, id="missing-iss"),
        pytest.param({"omit_claims": ["aud"]}, id="missing-aud"),
        pytest.param({"kid": "unknown-kid"}, id="unknown-kid"),
        pytest.param({"extra_claims": {"roles": [1, 2]}}, id="roles-not-strings"),
        pytest.param({"extra_claims": {"roles": {"a": 1}}}, id="roles-object"),
        pytest.param({"extra_claims": {"scope": 5}}, id="scope-number"),
    ],
)
async def test_tokens_failing_verification_are_unauthenticated(
    idp: DevIdentityProvider, verifier: JwtVerifier, mint_kwargs: dict[str, Any]
) -> None:
    kwargs: dict[str, Any] = {"audience": AUDIENCE, **mint_kwargs}
    token = idp.mint("alice", ["viewer"], kwargs.pop("audience"), **kwargs)

    await _rejected(verifier, token)


async def test_a_token_signed_with_a_foreign_key_is_unauthenticated(
    idp: DevIdentityProvider, verifier: JwtVerifier
) -> None:
    await _rejected(verifier, idp.mint_with_foreign_key("alice", ["viewer"], AUDIENCE))


async def test_a_foreign_key_with_an_unknown_kid_is_unauthenticated(
    idp: DevIdentityProvider, verifier: JwtVerifier
) -> None:
    await _rejected(verifier, idp.mint_with_foreign_key("alice", ["viewer"], AUDIENCE, kid="attacker"))


async def test_a_token_with_an_algorithm_outside_the_allow_list_is_unauthenticated(
    idp: DevIdentityProvider, make_verifier: MakeVerifier
) -> None:
    verifier = make_verifier(idp, algorithms=("ES256",))

    await _rejected(verifier, idp.mint("alice", ["viewer"], AUDIENCE))


async def test_an_unsigned_token_is_unauthenticated(idp: DevIdentityProvider, verifier: JwtVerifier) -> None:
    claims = idp.claims("alice", ["viewer"], AUDIENCE)
    token = jwt.encode(claims, None, algorithm="none", headers={"kid": idp.kid})

    await _rejected(verifier, token)


async def test_an_hmac_token_keyed_with_the_public_key_is_unauthenticated(
    idp: DevIdentityProvider, verifier: JwtVerifier
) -> None:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": idp.kid}).encode())
    payload = b64(json.dumps(idp.claims("alice", ["viewer"], AUDIENCE)).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(idp.jwks_path.read_bytes(), signing_input, hashlib.sha256).digest()

    await _rejected(verifier, f"{header}.{payload}.{b64(signature)}")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("garbage", id="garbage"),
        pytest.param("a.b.c", id="three-garbage-parts"),
        pytest.param("eyJhbGciOiJSUzI1NiJ9.e30", id="two-parts"),
        pytest.param("W10.e30.c2ln", id="header-is-array"),
    ],
)
async def test_garbage_tokens_are_unauthenticated(verifier: JwtVerifier, token: str) -> None:
    await _rejected(verifier, token)


async def test_leeway_accepts_a_token_just_expired(idp: DevIdentityProvider, verifier: JwtVerifier) -> None:
    token = idp.mint("alice", [], AUDIENCE, expires_at=int(time.time()) - 5)

    assert (await verifier.verify(token)).sub == "alice"


async def test_leeway_accepts_a_token_valid_in_a_few_seconds(idp: DevIdentityProvider, verifier: JwtVerifier) -> None:
    token = idp.mint("alice", [], AUDIENCE, not_before=int(time.time()) + 5)

    assert (await verifier.verify(token)).sub == "alice"


async def test_an_extra_accepted_audience_is_accepted(idp: DevIdentityProvider, verifier: JwtVerifier) -> None:
    token = idp.mint("alice", ["viewer"], OTHER_AUDIENCE)

    await _rejected(verifier, token)
    assert (await verifier.verify(token, audiences=[OTHER_AUDIENCE])).sub == "alice"


async def test_a_token_with_several_audiences_is_accepted_when_one_matches(
    idp: DevIdentityProvider, verifier: JwtVerifier
) -> None:
    token = idp.mint("alice", ["viewer"], [OTHER_AUDIENCE, AUDIENCE])

    assert (await verifier.verify(token)).sub == "alice"


async def test_a_second_verify_of_the_same_token_is_a_cache_hit(
    tmp_path: Path, make_verifier: MakeVerifier, decode_calls: list[str]
) -> None:
    idp = DevIdentityProvider.create(tmp_path / "idp", ISSUER)
    verifier = make_verifier(idp)
    token = idp.mint("alice", ["viewer"], AUDIENCE)

    first = await verifier.verify(token)
    idp.jwks_path.unlink()
    second = await verifier.verify(token)

    assert second is first
    assert decode_calls == [token]


async def test_a_cached_token_is_not_accepted_for_an_audience_it_was_not_issued_for(
    idp: DevIdentityProvider, verifier: JwtVerifier, decode_calls: list[str]
) -> None:
    token = idp.mint("alice", ["viewer"], OTHER_AUDIENCE)
    assert (await verifier.verify(token, audiences=[OTHER_AUDIENCE])).sub == "alice"

    await _rejected(verifier, token)
    await _rejected(verifier, token, audiences=["https://third.test.invalid"])


async def test_a_cached_entry_is_not_used_after_the_token_expires(
    idp: DevIdentityProvider, make_verifier: MakeVerifier, decode_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = make_verifier(idp, leeway=0)
    now = time.time()
    token = idp.mint("alice", [], AUDIENCE, issued_at=int(now), expires_at=int(now) + 60)
    await verifier.verify(token)

    later = types.SimpleNamespace(time=lambda: now + 3600, monotonic=time.monotonic)
    monkeypatch.setattr(auth_module, "time", later)
    await verifier.verify(token)  # jwt.decode still uses the real clock, so it passes

    assert decode_calls == [token, token]


async def test_the_cache_is_bounded(
    idp: DevIdentityProvider, make_verifier: MakeVerifier, decode_calls: list[str]
) -> None:
    verifier = make_verifier(idp, cache_size=2)
    tokens = [idp.mint(f"user{i}", [], AUDIENCE) for i in range(3)]
    for token in tokens:
        await verifier.verify(token)

    await verifier.verify(tokens[2])  # still cached
    await verifier.verify(tokens[0])  # evicted: verified again

    assert decode_calls == [*tokens, tokens[0]]


async def test_a_token_without_kid_uses_the_only_key(idp: DevIdentityProvider, verifier: JwtVerifier) -> None:
    token = jwt.encode(
        idp.claims("alice", [], AUDIENCE),
        idp._private_key,
        algorithm="RS256",  # noqa: SLF001 - no kid header
    )

    assert (await verifier.verify(token)).sub == "alice"


@pytest.mark.parametrize(
    "jwks",
    [
        pytest.param(None, id="file-missing"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(b'{"keys": []}', id="no-keys"),
        pytest.param(b'{"keys": [{"kty": "RSA"}]}', id="unusable-key"),
    ],
)
async def test_unusable_signing_keys_are_unauthenticated(
    idp: DevIdentityProvider, make_verifier: MakeVerifier, tmp_path: Path, jwks: bytes | None
) -> None:
    path = tmp_path / "jwks.json"
    if jwks is not None:
        path.write_bytes(jwks)
    verifier = make_verifier(idp, jwks_url=path.as_uri())

    await _rejected(verifier, idp.mint("alice", ["viewer"], AUDIENCE))


async def test_jwks_is_fetched_over_http(idp: DevIdentityProvider) -> None:
    requested: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        return httpx.Response(200, json=idp.jwks)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        verifier = JwtVerifier(
            JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://idp.test.invalid/jwks.json"), client
        )
        assert (await verifier.verify(idp.mint("alice", [], AUDIENCE))).sub == "alice"
        assert (await verifier.verify(idp.mint("bob", [], AUDIENCE))).sub == "bob"

    assert requested == ["https://idp.test.invalid/jwks.json"]


async def test_an_http_error_from_the_jwks_endpoint_is_unauthenticated(idp: DevIdentityProvider) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda _r: httpx.Response(503))) as client:
        verifier = JwtVerifier(JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://idp.invalid/jwks"), client)

        await _rejected(verifier, idp.mint("alice", [], AUDIENCE))


@pytest.mark.parametrize(
    ("header", "token"),
    [
        pytest.param("Bearer abc.def.ghi", "abc.def.ghi", id="bearer"),
        pytest.param("bearer abc", "abc", id="lower-case-scheme"),
        pytest.param("BEARER abc", "abc", id="upper-case-scheme"),
        pytest.param("Bearer   abc  ", "abc", id="extra-spaces"),
    ],
)
def test_bearer_token_extracts_the_credential(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("Bearer", id="scheme-only"),
        pytest.param("Bearer ", id="scheme-and-space"),
        pytest.param("Bearer    ", id="scheme-and-spaces"),
        pytest.param("Basic YWxpY2U6cHc=", id="basic"),
        pytest.param("Token abc", id="other-scheme"),
        pytest.param("abc.def.ghi", id="no-scheme"),
        pytest.param("Bearerabc", id="no-separator"),
    ],
)
def test_bearer_token_rejects_missing_or_non_bearer_headers(header: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as exc_info:
        bearer_token(header)

    assert exc_info.value.category == "unauthenticated"


# -- identity claims pyjwt lets through (issue 5, defect 7) -------------------------------------

FAR_FUTURE = 4102444800  # 2100-01-01T00:00:00Z


@pytest.mark.parametrize(
    "extra_claims",
    [
        pytest.param({"sub": ""}, id="empty-sub"),
        pytest.param({"sub": "   \t"}, id="blank-sub"),
        pytest.param({"sub": 42}, id="numeric-sub"),
        pytest.param({"exp": str(FAR_FUTURE)}, id="exp-as-string"),
        pytest.param({"exp": 1e300}, id="exp-1e300"),
        pytest.param({"exp": FAR_FUTURE * 1000}, id="exp-after-year-9999"),
        pytest.param({"exp": float("inf")}, id="exp-infinite"),
        pytest.param({"exp": float("nan")}, id="exp-nan"),
        pytest.param({"nbf": True}, id="nbf-boolean"),
        pytest.param({"nbf": "0"}, id="nbf-as-string"),
        pytest.param({"nbf": -1}, id="nbf-before-the-epoch"),
        pytest.param({"iat": "0"}, id="iat-as-string"),
        pytest.param({"iat": [1]}, id="iat-as-list"),
    ],
)
async def test_a_blank_subject_or_a_date_that_is_not_a_sane_number_is_unauthenticated(
    idp: DevIdentityProvider, verifier: JwtVerifier, extra_claims: dict[str, Any]
) -> None:
    await _rejected(verifier, idp.mint("alice", ["viewer"], AUDIENCE, extra_claims=extra_claims))


async def test_fractional_dates_are_numeric_dates(idp: DevIdentityProvider, verifier: JwtVerifier) -> None:
    now = time.time()
    claims = {"iat": now - 0.5, "nbf": now - 0.5, "exp": now + 600.25}

    subject = await verifier.verify(idp.mint("alice", [], AUDIENCE, extra_claims=claims))

    assert subject.claims["exp"] == now + 600.25


# -- JWKS fetching under unknown kids (issue 5, defect 3) ---------------------------------------


class _JwksServer:
    """A real HTTP server on loopback serving a JWKS, counting fetches; each answer takes ``delay`` s."""

    def __init__(self, jwks: dict[str, Any], delay: float) -> None:
        self.jwks = jwks
        self.status = 200
        self.delay = delay
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.fetches += 1
                time.sleep(server.delay)
                body = json.dumps(server.jwks).encode()
                self.send_response(server.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def jwks_server(idp: DevIdentityProvider) -> Iterator[_JwksServer]:
    server = _JwksServer(idp.jwks, delay=0.01)
    yield server
    server.close()


class _Clock:
    """``auth.time`` with a monotonic clock the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    @staticmethod
    def time() -> float:
        return time.time()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(auth_module, "time", fake)
    return fake


def _random_kid_tokens(idp: DevIdentityProvider, count: int) -> list[str]:
    return [idp.mint(f"attacker{i}", [], AUDIENCE, kid=f"random-{uuid.uuid4().hex}") for i in range(count)]


async def _verify_all(verifier: JwtVerifier, tokens: list[str]) -> list[str | AuthenticationFailed]:
    outcomes: list[str | AuthenticationFailed] = [AuthenticationFailed("not run")] * len(tokens)

    async def one(i: int, token: str) -> None:
        try:
            outcomes[i] = (await verifier.verify(token)).sub
        except AuthenticationFailed as exc:
            outcomes[i] = exc

    async with anyio.create_task_group() as tg:
        for i, token in enumerate(tokens):
            tg.start_soon(one, i, token)
    return outcomes


@pytest.fixture
def http_verifier(http: httpx.AsyncClient, jwks_server: _JwksServer) -> JwtVerifier:
    return JwtVerifier(JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_server.url), http)


async def test_two_hundred_concurrent_unknown_kids_fetch_the_jwks_at_most_once(
    idp: DevIdentityProvider, http_verifier: JwtVerifier, jwks_server: _JwksServer, clock: _Clock
) -> None:
    await http_verifier.verify(idp.mint("alice", [], AUDIENCE))
    clock.offset += 3600  # the keys are old enough to refetch once

    outcomes = await _verify_all(http_verifier, _random_kid_tokens(idp, 200))

    assert all(isinstance(o, AuthenticationFailed) for o in outcomes)
    assert jwks_server.fetches == 2  # the first load and one refresh shared by all 200

    await _verify_all(http_verifier, _random_kid_tokens(idp, 50))  # within the refresh interval

    assert jwks_server.fetches == 2


async def test_concurrent_tokens_share_one_failing_jwks_fetch(
    idp: DevIdentityProvider, http_verifier: JwtVerifier, jwks_server: _JwksServer
) -> None:
    jwks_server.status = 503

    outcomes = await _verify_all(http_verifier, [idp.mint(f"user{i}", [], AUDIENCE) for i in range(50)])

    assert all(isinstance(o, AuthenticationFailed) for o in outcomes)
    assert jwks_server.fetches == 1


async def test_a_rotated_key_is_picked_up_with_one_fetch(
    idp: DevIdentityProvider,
    http_verifier: JwtVerifier,
    jwks_server: _JwksServer,
    clock: _Clock,
    tmp_path: Path,
) -> None:
    await http_verifier.verify(idp.mint("alice", [], AUDIENCE))
    rotated = DevIdentityProvider.create(tmp_path / "rotated", ISSUER)
    jwks_server.jwks = {"keys": [*idp.jwks["keys"], *rotated.jwks["keys"]]}
    clock.offset += 3600

    subject = await http_verifier.verify(rotated.mint("bob", [], AUDIENCE))

    assert subject.sub == "bob"
    assert jwks_server.fetches == 2


async def test_a_valid_token_amid_a_flood_of_unknown_kids_waits_for_at_most_one_fetch(
    idp: DevIdentityProvider,
    http_verifier: JwtVerifier,
    jwks_server: _JwksServer,
    clock: _Clock,
    tmp_path: Path,
) -> None:
    await http_verifier.verify(idp.mint("alice", [], AUDIENCE))
    rotated = DevIdentityProvider.create(tmp_path / "rotated", ISSUER)
    jwks_server.jwks = {"keys": [*idp.jwks["keys"], *rotated.jwks["keys"]]}
    clock.offset += 3600
    flood = _random_kid_tokens(idp, 200)
    fetches_before_valid: list[int] = []

    async def valid() -> None:
        assert (await http_verifier.verify(rotated.mint("bob", [], AUDIENCE))).sub == "bob"
        fetches_before_valid.append(jwks_server.fetches - 1)

    async def unknown(token: str) -> None:
        with pytest.raises(AuthenticationFailed):
            await http_verifier.verify(token)

    async with anyio.create_task_group() as tg:
        for token in flood[:100]:
            tg.start_soon(unknown, token)
        tg.start_soon(valid)
        for token in flood[100:]:
            tg.start_soon(unknown, token)

    assert fetches_before_valid == [1]
    assert jwks_server.fetches == 2


async def test_an_unknown_kid_is_remembered_and_not_fetched_for_again(
    idp: DevIdentityProvider, http_verifier: JwtVerifier, jwks_server: _JwksServer, clock: _Clock
) -> None:
    await http_verifier.verify(idp.mint("alice", [], AUDIENCE))
    token = idp.mint("mallory", [], AUDIENCE, kid="never-published")
    clock.offset += 3600
    await _rejected(http_verifier, token)
    assert jwks_server.fetches == 2

    clock.offset += 60  # past the refresh interval, within the unknown-kid TTL
    await _rejected(http_verifier, idp.mint("mallory", [], AUDIENCE, kid="never-published"))
    assert jwks_server.fetches == 2

    clock.offset += 3600  # past the TTL: the issuer may have published it since
    await _rejected(http_verifier, idp.mint("mallory", [], AUDIENCE, kid="never-published"))
    assert jwks_server.fetches == 3


async def test_a_verifier_without_a_client_fetches_an_http_jwks_with_a_client_of_its_own(
    idp: DevIdentityProvider, jwks_server: _JwksServer
) -> None:
    verifier = JwtVerifier(JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_server.url))
    assert (await verifier.verify(idp.mint("alice", [], AUDIENCE))).sub == "alice"
    assert (await verifier.verify(idp.mint("bob", [], AUDIENCE))).sub == "bob"
    assert jwks_server.fetches == 1


def test_the_data_plane_module_still_exports_the_verifier() -> None:
    import gateway.dataplane.auth as dataplane_auth

    assert dataplane_auth.JwtVerifier is JwtVerifier and dataplane_auth.bearer_token is bearer_token
