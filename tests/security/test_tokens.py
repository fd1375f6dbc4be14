"""Hostile bearer tokens are refused with 401 before anything else happens.

Each token is minted here: with the dev IdP's own private key (so only the one
property under test is wrong), with no signature at all (``alg: none``), or HMAC-signed
with the IdP's *public* key (RS/HS key confusion). Each is sent with a ``tools/call`` that
a valid token gets through to the upstream, and each must get 401 with an RFC 6750
``WWW-Authenticate`` challenge and never reach the upstream. Source: RFC 7519 §4.1,
RFC 8725 §2.1 and §3.1 (JWT best current practice), RFC 6750 §2 and §3.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.devtools.stack import LocalStack
from tests.security.helpers import (
    assert_unauthorized,
    call_body,
    call_headers,
    marker,
    post_call,
    upstream_saw,
    written_by_gateway,
)

pytestmark = [pytest.mark.integration, pytest.mark.db]

HOUR = 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(stack: LocalStack, alg: str) -> str:
    """Valid claims, ``alg`` set to a "none" spelling, empty signature (RFC 7519 §6.1)."""
    header = {"alg": alg, "typ": "JWT", "kid": stack.idp.kid}
    claims = stack.idp.claims("mallory", ["admin"], stack.audience)
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def _hmac_with_public_key(stack: LocalStack, key_format: serialization.PublicFormat) -> str:
    """Valid claims, HS256 with the IdP's RSA public key (PEM) as the HMAC secret."""
    public = stack.idp._private_key.public_key()  # noqa: SLF001 - the dev IdP's key, only to derive the public PEM
    secret = public.public_bytes(serialization.Encoding.PEM, key_format)
    header = {"alg": "HS256", "typ": "JWT", "kid": stack.idp.kid}
    claims = stack.idp.claims("mallory", ["admin"], stack.audience)
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _minted(**overrides: Any) -> Callable[[LocalStack], str]:
    """A correctly signed token whose claims are overridden by ``overrides``."""
    return lambda s: s.idp.mint("mallory", ["admin"], s.audience, extra_claims=overrides)


HOSTILE_TOKENS = [
    pytest.param(lambda s: _unsigned(s, "none"), id="alg-none"),
    pytest.param(lambda s: _unsigned(s, "None"), id="alg-None"),
    pytest.param(
        lambda s: _hmac_with_public_key(s, serialization.PublicFormat.SubjectPublicKeyInfo),
        id="hs256-with-rsa-spki-pem",
    ),
    pytest.param(lambda s: _hmac_with_public_key(s, serialization.PublicFormat.PKCS1), id="hs256-with-rsa-pkcs1-pem"),
    pytest.param(lambda s: s.idp.mint("mallory", ["admin"], s.audience, ttl_seconds=-HOUR), id="expired"),
    pytest.param(lambda s: _minted(nbf=int(time.time()) + HOUR)(s), id="nbf-in-the-future"),
    pytest.param(_minted(iss="http://evil.example/idp"), id="wrong-iss"),
    pytest.param(lambda s: s.idp.mint("mallory", ["admin"], "http://evil.example/mcp"), id="wrong-aud"),
    pytest.param(lambda s: s.idp.mint("mallory", ["admin"], f"{s.control_url}/mcp"), id="aud-of-another-local-port"),
    pytest.param(lambda s: s.idp.mint("", ["admin"], s.audience), id="empty-sub"),
    pytest.param(lambda s: s.idp.mint(" ", ["admin"], s.audience), id="blank-sub"),
    pytest.param(lambda s: s.idp.mint("\t\n", ["admin"], s.audience), id="whitespace-sub"),
    pytest.param(lambda s: _minted(exp=str(int(time.time()) + HOUR))(s), id="exp-as-string"),
    pytest.param(_minted(exp=1e300), id="exp-1e300"),
    pytest.param(lambda s: _minted(nbf=str(int(time.time()) - 60))(s), id="nbf-as-string"),
]


@pytest.mark.parametrize("make_token", HOSTILE_TOKENS)
def test_a_hostile_token_gets_401_and_never_reaches_the_upstream(
    http: httpx.Client, stack: LocalStack, make_token: Callable[[LocalStack], str]
) -> None:
    text, token = marker("hostile-token"), make_token(stack)
    resp = post_call(http, stack, token, "demo__echo", {"text": text})
    assert_unauthorized(stack, resp, token_sent=True)
    assert not upstream_saw(http, stack, text)
    assert [p for p in written_by_gateway(stack) if token.encode() in p.read_bytes()] == []


def test_the_same_call_with_a_valid_token_reaches_the_upstream(http: httpx.Client, stack: LocalStack) -> None:
    """The control for the cases above: only the token differs."""
    text = marker("valid-token")
    resp = post_call(http, stack, stack.idp.mint("mallory", ["admin"], stack.audience), "demo__echo", {"text": text})
    assert resp.status_code == 200 and resp.json()["result"]["isError"] is False, resp.text
    assert upstream_saw(http, stack, text)


def test_a_token_in_the_query_string_is_never_accepted(http: httpx.Client, stack: LocalStack) -> None:
    """RFC 6750 §2.3 (URI query) and §2.2 (form body) are not supported: only the header is."""
    token = stack.idp.mint("mallory", ["admin"], stack.audience)
    text = marker("query-token")
    body = call_body("demo__echo", {"text": text})
    for name in ("access_token", "token", "authorization"):
        resp = http.post(f"{stack.data_url}/mcp", params={name: token}, json=body, headers=call_headers("demo__echo"))
        assert_unauthorized(stack, resp, token_sent=False)
    form = http.post(
        f"{stack.data_url}/mcp",
        content=f"access_token={token}".encode(),
        headers={**call_headers("demo__echo"), "content-type": "application/x-www-form-urlencoded"},
    )
    assert_unauthorized(stack, form, token_sent=False)
    assert not upstream_saw(http, stack, text)
    assert [p for p in written_by_gateway(stack) if token.encode() in p.read_bytes()] == []
