"""The test authorization server (tests/support/oauth_server.py), run as a real subprocess:
RFC 8414 metadata, JWT access tokens, client authentication, PKCE, refresh rotation, token
exchange, dynamic client registration, revocation and the admin hooks."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from tests.support.oauth_server import (
    DEFAULT_CLIENTS,
    TOKEN_EXCHANGE,
    RunningOAuthServer,
    TestIdP,
    serve_in_thread,
    start_subprocess,
)

pytestmark = pytest.mark.integration

BASIC, POST = DEFAULT_CLIENTS
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
REDIRECT = "http://127.0.0.1:9/callback"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> TestIdP:
    return TestIdP(tmp_path_factory.mktemp("idp") / "jwks.json")


@pytest.fixture(scope="module")
def server(idp: TestIdP, log_dir: Path) -> Iterator[RunningOAuthServer]:
    with start_subprocess(log_dir / "test_oauth_server", subject_jwks=idp.jwks_path, token_ttl=120) as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10) as client:
        yield client


def _verify(server: RunningOAuthServer, token: str, audience: Any = None) -> dict[str, Any]:
    """Verify an access token as a resource server would: the AS's JWKS, RS256, issuer."""
    keys = jwt.PyJWKSet.from_dict(httpx.get(f"{server.url}/jwks.json", trust_env=False).json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    options = {"verify_aud": audience is not None, "require": ["exp", "iat", "jti", "sub", "client_id"]}
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["RS256"], audience=audience, issuer=server.url, options=options
    )
    return claims


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _authorize(http: httpx.Client, server: RunningOAuthServer, client_id: str, challenge: str, **extra: str) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "state": "st-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    answer = http.get(f"{server.url}/authorize", params=params)
    assert answer.status_code == 302, answer.text
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert query["state"] == ["st-1"]
    return query["code"][0]


def _code_token(http: httpx.Client, server: RunningOAuthServer, code: str, verifier: str) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    return http.post(server.token_endpoint, data=data, auth=(BASIC.client_id, BASIC.client_secret))


def test_metadata_is_rfc8414_and_names_every_endpoint(server: RunningOAuthServer, http: httpx.Client) -> None:
    metadata = http.get(f"{server.url}/.well-known/oauth-authorization-server").json()
    AuthorizationServerMetadata(metadata).validate()
    assert metadata["issuer"] == server.url
    assert metadata["token_endpoint"] == f"{server.url}/token"
    assert metadata["jwks_uri"] == f"{server.url}/jwks.json"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert TOKEN_EXCHANGE in metadata["grant_types_supported"]
    assert {"registration_endpoint", "revocation_endpoint", "authorization_endpoint"} <= set(metadata)
    keys = http.get(metadata["jwks_uri"]).json()["keys"]
    assert [k["kid"] for k in keys] == ["as-1"] and "d" not in keys[0]  # public part only


@pytest.mark.parametrize("client", [BASIC, POST], ids=["client_secret_basic", "client_secret_post"])
def test_client_credentials_issue_a_signed_jwt(server: RunningOAuthServer, http: httpx.Client, client: Any) -> None:
    data = {"grant_type": "client_credentials", "scope": "read write", "audience": "https://api.test"}
    if client.auth_method == "client_secret_post":
        answer = http.post(
            server.token_endpoint, data={**data, "client_id": client.client_id, "client_secret": client.client_secret}
        )
    else:
        answer = http.post(server.token_endpoint, data=data, auth=(client.client_id, client.client_secret))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 120 and "refresh_token" not in body
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
    claims = _verify(server, body["access_token"], audience="https://api.test")
    assert claims["sub"] == claims["client_id"] == client.client_id
    assert claims["scope"] == "read write" and claims["exp"] - claims["iat"] == 120


def test_client_authentication_is_enforced(server: RunningOAuthServer, http: httpx.Client) -> None:
    wrong = http.post(server.token_endpoint, data={"grant_type": "client_credentials"}, auth=(BASIC.client_id, "nope"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    # a client registered for client_secret_basic may not authenticate in the body
    body = {"grant_type": "client_credentials", "client_id": BASIC.client_id, "client_secret": BASIC.client_secret}
    assert http.post(server.token_endpoint, data=body).json()["error"] == "invalid_client"
    unknown = http.post(
        server.token_endpoint, data={"grant_type": "password"}, auth=(BASIC.client_id, BASIC.client_secret)
    )
    assert unknown.json()["error"] == "unsupported_grant_type"


def test_authorization_code_with_pkce(server: RunningOAuthServer, http: httpx.Client) -> None:
    verifier, challenge = _pkce()
    code = _authorize(http, server, BASIC.client_id, challenge, approve_as="alice", scope="repo")
    wrong = _code_token(http, server, code, _pkce()[0])
    assert wrong.json()["error"] == "invalid_grant"
    code = _authorize(
        http, server, BASIC.client_id, challenge, approve_as="alice", scope="repo", resource="https://mcp.test"
    )
    answer = _code_token(http, server, code, verifier)
    assert answer.status_code == 200, answer.text
    claims = _verify(server, answer.json()["access_token"], audience="https://mcp.test")
    assert claims["sub"] == "alice" and claims["client_id"] == BASIC.client_id and claims["scope"] == "repo"
    assert answer.json()["refresh_token"]
    assert _code_token(http, server, code, verifier).json()["error"] == "invalid_grant"  # single use


@pytest.mark.parametrize(
    "params",
    [{}, {"code_challenge_method": "S256"}, {"code_challenge": "x" * 43, "code_challenge_method": "plain"}],
    ids=["no-pkce", "no-challenge", "plain"],
)
def test_pkce_s256_is_required(server: RunningOAuthServer, http: httpx.Client, params: dict[str, str]) -> None:
    query = {
        "response_type": "code",
        "client_id": BASIC.client_id,
        "redirect_uri": REDIRECT,
        "approve_as": "a",
        **params,
    }
    answer = http.get(f"{server.url}/authorize", params=query)
    assert answer.status_code in (302, 400)
    error = (
        parse_qs(urlsplit(answer.headers["location"]).query)["error"][0]
        if answer.status_code == 302
        else answer.json()["error"]
    )
    assert error == "invalid_request"


def test_consent_without_approval_and_denial(server: RunningOAuthServer, http: httpx.Client) -> None:
    _, challenge = _pkce()
    query = {
        "response_type": "code",
        "client_id": BASIC.client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    pending = http.get(f"{server.url}/authorize", params=query)
    assert pending.status_code == 200 and pending.json()["consent_required"] is True
    denied = http.get(f"{server.url}/authorize", params={**query, "deny": "1"})
    assert denied.status_code == 302 and "error=access_denied" in denied.headers["location"]
    stranger = http.get(
        f"{server.url}/authorize", params={**query, "redirect_uri": "https://evil.test/cb", "approve_as": "a"}
    )
    assert stranger.status_code == 400  # never redirected to an unregistered URI


def test_refresh_rotates_and_reuse_revokes_the_family(server: RunningOAuthServer, http: httpx.Client) -> None:
    verifier, challenge = _pkce()
    first = _code_token(
        http, server, _authorize(http, server, BASIC.client_id, challenge, approve_as="bob"), verifier
    ).json()
    auth = (BASIC.client_id, BASIC.client_secret)
    second = http.post(
        server.token_endpoint, data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}, auth=auth
    )
    assert second.status_code == 200, second.text
    assert second.json()["refresh_token"] != first["refresh_token"]
    assert _verify(server, second.json()["access_token"])["sub"] == "bob"
    reuse = http.post(
        server.token_endpoint, data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}, auth=auth
    )
    assert reuse.json()["error"] == "invalid_grant"
    # the rotated token came back: the newer one is revoked too
    newer = http.post(
        server.token_endpoint,
        data={"grant_type": "refresh_token", "refresh_token": second.json()["refresh_token"]},
        auth=auth,
    )
    assert newer.json()["error"] == "invalid_grant"


def test_token_exchange_keeps_the_subject_and_names_the_actor(
    server: RunningOAuthServer, http: httpx.Client, idp: TestIdP
) -> None:
    data = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": idp.token("carol"),
        "subject_token_type": JWT_TYPE,
        "audience": "https://upstream.test",
    }
    answer = http.post(server.token_endpoint, data=data, auth=(BASIC.client_id, BASIC.client_secret))
    assert answer.status_code == 200, answer.text
    assert answer.json()["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    claims = _verify(server, answer.json()["access_token"], audience="https://upstream.test")
    assert claims["sub"] == "carol" and claims["act"] == {"sub": BASIC.client_id}


def test_token_exchange_refuses_untrusted_or_expired_subjects(
    server: RunningOAuthServer, http: httpx.Client, tmp_path: Path, idp: TestIdP
) -> None:
    stranger = TestIdP(tmp_path / "other.json", kid=idp.kid)  # same kid, another key
    auth = (BASIC.client_id, BASIC.client_secret)
    for subject in (stranger.token("mallory"), idp.token("carol", ttl=-5), "not-a-jwt"):
        data = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": JWT_TYPE}
        answer = http.post(server.token_endpoint, data=data, auth=auth)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"


def test_dynamic_client_registration(server: RunningOAuthServer, http: httpx.Client) -> None:
    metadata = {
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_post",
        "client_name": "gateway",
    }
    answer = http.post(f"{server.url}/register", json=metadata)
    assert answer.status_code == 201, answer.text
    registered = answer.json()
    assert registered["client_id"] and registered["client_secret"] and registered["redirect_uris"] == [REDIRECT]
    verifier, challenge = _pkce()
    code = _authorize(http, server, registered["client_id"], challenge, approve_as="dave")
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
        "client_id": registered["client_id"],
        "client_secret": registered["client_secret"],
    }
    token = http.post(server.token_endpoint, data=data)
    assert token.status_code == 200, token.text
    assert _verify(server, token.json()["access_token"])["sub"] == "dave"
    # it registered no client_credentials grant
    cc = {
        "grant_type": "client_credentials",
        "client_id": registered["client_id"],
        "client_secret": registered["client_secret"],
    }
    assert http.post(server.token_endpoint, data=cc).json()["error"] == "unauthorized_client"


def test_registration_token_when_configured(http: httpx.Client) -> None:
    with serve_in_thread(registration_token="reg-token") as server:
        body = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic"}
        assert http.post(f"{server.url}/register", json=body).status_code in (400, 401, 403)
        headers = {"Authorization": "Bearer reg-token"}
        assert http.post(f"{server.url}/register", json=body, headers=headers).status_code == 201


def test_revocation_endpoint(server: RunningOAuthServer, http: httpx.Client) -> None:
    verifier, challenge = _pkce()
    tokens = _code_token(
        http, server, _authorize(http, server, BASIC.client_id, challenge, approve_as="erin"), verifier
    ).json()
    auth = (BASIC.client_id, BASIC.client_secret)
    assert http.post(f"{server.url}/revoke", data={"token": tokens["refresh_token"]}, auth=auth).status_code == 200
    refresh = http.post(
        server.token_endpoint, data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, auth=auth
    )
    assert refresh.json()["error"] == "invalid_grant"
    assert http.post(f"{server.url}/revoke", data={"token": tokens["access_token"]}, auth=auth).status_code == 200
    jti = _verify(server, tokens["access_token"])["jti"]
    assert jti in http.get(f"{server.url}/_revoked").json()["jti"]


def test_admin_revokes_a_client_and_a_user(server: RunningOAuthServer, http: httpx.Client) -> None:
    body = {"grant_type": "client_credentials", "client_id": POST.client_id, "client_secret": POST.client_secret}
    assert http.post(server.token_endpoint, data=body).status_code == 200
    server.admin("revoke", {"client_id": POST.client_id})
    assert http.post(server.token_endpoint, data=body).json()["error"] == "invalid_client"
    server.admin("restore", {"client_id": POST.client_id})
    assert http.post(server.token_endpoint, data=body).status_code == 200
    verifier, challenge = _pkce()
    tokens = _code_token(
        http, server, _authorize(http, server, BASIC.client_id, challenge, approve_as="frank"), verifier
    ).json()
    assert server.admin("revoke", {"user": "frank"})["revoked_refresh_tokens"] == 1
    data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    assert (
        http.post(server.token_endpoint, data=data, auth=(BASIC.client_id, BASIC.client_secret)).json()["error"]
        == "invalid_grant"
    )


def test_stats_count_issued_tokens_per_grant(http: httpx.Client) -> None:
    with serve_in_thread(token_ttl=1) as server:
        assert server.stats()["issued"] == {}
        for _ in range(3):
            http.post(
                server.token_endpoint,
                data={"grant_type": "client_credentials"},
                auth=(BASIC.client_id, BASIC.client_secret),
            )
        http.post(server.token_endpoint, data={"grant_type": "client_credentials"}, auth=(BASIC.client_id, "bad"))
        stats = server.stats()
        assert stats["issued"] == {"client_credentials": 3} and stats["token_requests"] == 4
        assert stats["errors"] == {"invalid_client": 1}
        assert server.issued("client_credentials", BASIC.client_id) == 3
        token = http.post(
            server.token_endpoint,
            data={"grant_type": "client_credentials"},
            auth=(BASIC.client_id, BASIC.client_secret),
        ).json()
        assert token["expires_in"] == 1
        server.admin("config", {"token_ttl": 7})
        server.admin("reset")
        token = http.post(
            server.token_endpoint,
            data={"grant_type": "client_credentials"},
            auth=(BASIC.client_id, BASIC.client_secret),
        ).json()
        assert token["expires_in"] == 7 and server.stats()["issued"] == {"client_credentials": 1}
        assert jwt.decode(token["access_token"], options={"verify_signature": False})["exp"] <= time.time() + 8
