"""The credential broker's material, with a token-issuer double behind its Protocol."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from gateway.controlplane.broker import material_for
from gateway.errors import CredentialUnavailable

pytestmark = pytest.mark.anyio


class Issuer:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def client_credentials(
        self, credential_id: str, config: Any, client_secret: str, *, version: str = ""
    ) -> Any:
        self.asked.append("cc")
        return _Token("tok-cc", time.time() + 100)

    async def token_exchange(
        self, credential_id: str, config: Any, client_secret: str, subject_token: str, *, version: str = ""
    ) -> Any:
        self.asked.append("tx")
        return _Token("tok-tx", time.time() + 600)


class _Token:
    def __init__(self, access_token: str, expires_at: float) -> None:
        self.access_token, self.expires_at = access_token, expires_at


def _row(kind: str) -> dict[str, Any]:
    return {"kind": kind, "config": {}, "credential_id": "c1", "fingerprint": "v1"}


def _jwt(exp: float) -> str:
    return jwt.encode({"sub": "alice", "exp": int(exp)}, "k" * 32, algorithm="HS256")


@pytest.mark.parametrize(
    ("kind", "secret", "expected"),
    [
        ("bearer", {"token": "t"}, {"headers": {"authorization": "Bearer t"}}),
        ("headers", {"headers": {"X-Api-Key": "k"}}, {"headers": {"x-api-key": "k"}}),
        ("query", {"params": {"api_key": "k"}}, {"query": {"api_key": "k"}}),
        ("stdio_env", {"env": {"TOKEN": "k"}}, {"env": {"TOKEN": "k"}}),
    ],
)
async def test_static_kinds_become_their_material(kind: str, secret: dict[str, Any], expected: dict[str, Any]) -> None:
    out = await material_for(Issuer(), _row(kind), "v1", secret, None)
    assert {k: v for k, v in out.items() if v and k != "expires_in"} == expected
    assert out["expires_in"] == 300


async def test_a_token_is_handed_out_with_a_margin_before_it_expires() -> None:
    out = await material_for(Issuer(), _row("oauth_client_credentials"), "v1", {"client_secret": "s"}, None)
    assert out["headers"] == {"authorization": "Bearer tok-cc"}
    assert 79 <= out["expires_in"] <= 80  # 100 s left, less 20 %


async def test_an_expired_subject_token_is_refused_without_asking_the_token_endpoint() -> None:
    issuer = Issuer()
    row, secret = _row("oauth_token_exchange"), {"client_secret": "s"}
    with pytest.raises(CredentialUnavailable):
        await material_for(issuer, row, "v1", secret, _jwt(time.time() - 10))  # within the data plane's leeway
    assert issuer.asked == []
    out = await material_for(issuer, row, "v1", secret, _jwt(time.time() + 600))
    assert out["headers"] == {"authorization": "Bearer tok-tx"} and issuer.asked == ["tx"]
