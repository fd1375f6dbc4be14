"""The credential broker: its material, with a token-issuer double behind its Protocol; and, on a
real control plane (PostgreSQL, a JWKS), that it resolves per-user material only for the
caller its verified token proves."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway.config import Config
from gateway.controlplane.broker import material_for
from gateway.credentials import Keyring, parse_kek
from gateway.db import oauth_users as db_oauth_users
from gateway.devtools.idp import DevIdentityProvider
from gateway.errors import CredentialUnavailable
from tests.controlplane.helpers import asgi_controlplane, make_config
from tests.credentials.helpers import new_kek

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


# -- the broker verifies the caller of a per-user credential (real PostgreSQL, a real JWKS) ---------

ISSUER = "https://idp.broker-test.invalid"
AUDIENCE = "https://gateway.broker-test.invalid/mcp"
PUBLIC = "https://dp.broker-test.invalid"
SERVER = "github"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> DevIdentityProvider:
    return DevIdentityProvider.create(tmp_path_factory.mktemp("broker-idp"), ISSUER)


def _config(database_url: str, opa_bin: Path, kek: str, jwt: dict[str, str] | None) -> Config:
    return make_config(
        database_url,
        opa_bin,
        credentials={"kek": kek},
        data_plane={"public_url": PUBLIC},
        **({"jwt": jwt} if jwt else {}),
    )


class Broker:
    """A control plane with one ``oauth_authorization_code`` credential bound to everyone on
    ``github``, and alice connected (her tokens stored as the callback would)."""

    def __init__(self, admin: httpx.AsyncClient, internal: httpx.AsyncClient, state: dict[str, Any]) -> None:
        self.admin, self.internal, self.state = admin, internal, state
        self.credential = self.binding = self.version = ""

    async def setup(self, kek: str) -> Broker:
        server = {"name": SERVER, "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"}
        assert (await self.admin.post("/v1/servers", json=server)).status_code == 201
        body = {"name": "gh", "kind": "oauth_authorization_code", "secret": {}}
        created = await self.admin.post("/v1/credentials", json=body)
        assert created.status_code == 201, created.text
        self.credential, self.version = created.json()["id"], created.json()["fingerprint"]
        bind = {"server": SERVER, "subject": {"kind": "everyone"}, "credential_id": self.credential}
        bound = await self.admin.post("/v1/credential-bindings", json=bind)
        assert bound.status_code == 201, bound.text
        self.binding = bound.json()["id"]
        tokens = db_oauth_users.UserTokens(
            issuer="https://as.invalid",
            token_endpoint="https://as.invalid/token",
            refresh_token=None,
            access_token="alice-upstream-access",
            access_expires_at=time.time() + 3600,
        )
        async with self.state["cp_pool"].acquire() as conn:
            await db_oauth_users.store_tokens(
                conn, "tenant_local", "prod", self.credential, (ISSUER, "alice"), Keyring(parse_kek(kek, "t")), tokens
            )
        return self

    async def resolve(self, sub: str, token: str | None, *, issuer: str = ISSUER) -> httpx.Response:
        body: dict[str, Any] = {
            "binding_id": self.binding,
            "credential_id": self.credential,
            "version": self.version,
            "server": SERVER,
            "dataplane_id": "dp-test",
            "subject": {"sub": sub, "issuer": issuer, "client_id": None},
        }
        if token is not None:
            body["subject_token"] = token
        return await self.internal.post("/v1/dataplane/credentials/resolve", json=body)

    async def uses(self) -> list[tuple[str, str, str | None]]:
        items = (await self.admin.get(f"/v1/credentials/{self.credential}/uses")).json()["items"]
        return [(i["subject"]["sub"], i["outcome"], i["error_category"]) for i in reversed(items)]


@pytest.fixture
async def broker(database_url: str, opa_bin: Path, idp: DevIdentityProvider) -> AsyncIterator[Broker]:
    kek = new_kek()
    jwt_config = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": idp.jwks_url}
    async with asgi_controlplane(_config(database_url, opa_bin, kek, jwt_config)) as (admin, internal, state):
        yield await Broker(admin, internal, state).setup(kek)


def _refused(resp: httpx.Response) -> None:
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"] == "subject_unverified"
    assert "alice-upstream-access" not in resp.text and "connect_url" not in resp.json()


@pytest.mark.db
async def test_the_callers_verified_token_gets_their_own_material_for_each_accepted_audience(
    broker: Broker, idp: DevIdentityProvider
) -> None:
    for audience in (AUDIENCE, f"{PUBLIC}/mcp", f"{PUBLIC}/mcp/{SERVER}"):
        ok = await broker.resolve("alice", idp.mint("alice", [], audience))
        assert ok.status_code == 200, (audience, ok.text)
        assert ok.json()["headers"] == {"authorization": "Bearer alice-upstream-access"}
    # verified but never connected: the connect link, for that verified user
    bob = await broker.resolve("bob", idp.mint("bob", [], AUDIENCE))
    assert bob.status_code == 409 and bob.json()["error"] == "credential_not_connected", bob.text
    assert await broker.uses() == [("alice", "resolved", None)] * 3 + [("bob", "refused", "credential_not_connected")]


@pytest.mark.db
async def test_a_subject_the_token_does_not_prove_is_refused_and_audited(
    broker: Broker, idp: DevIdentityProvider, tmp_path: Path
) -> None:
    now = int(time.time())
    other_idp = DevIdentityProvider.create(tmp_path / "other", "https://other-idp.invalid")
    attempts = {
        "missing token": None,
        "another user's token": idp.mint("bob", [], AUDIENCE),
        "expired (beyond the leeway)": idp.mint("alice", [], AUDIENCE, issued_at=now - 600, expires_at=now - 120),
        "forged signature": idp.mint_with_foreign_key("alice", [], AUDIENCE),
        "another server's audience": idp.mint("alice", [], f"{PUBLIC}/mcp/jira"),
        "another issuer": other_idp.mint("alice", [], AUDIENCE),
        "not a JWT": "not-a-jwt",
    }
    for name, token in attempts.items():
        resp = await broker.resolve("alice", token)
        assert resp.status_code == 403, (name, resp.text)
        _refused(resp)
    # alice's valid token does not make a forged claim about bob (or an issuer it is not from) true
    _refused(await broker.resolve("bob", idp.mint("alice", [], AUDIENCE)))
    _refused(await broker.resolve("alice", idp.mint("alice", [], AUDIENCE), issuer="https://other-idp.invalid"))
    uses = await broker.uses()
    assert len(uses) == len(attempts) + 2
    assert {(outcome, category) for _, outcome, category in uses} == {("refused", "subject_unverified")}


@pytest.mark.db
async def test_without_jwt_configuration_per_user_material_is_refused_and_other_kinds_still_resolve(
    database_url: str, opa_bin: Path, idp: DevIdentityProvider
) -> None:
    kek = new_kek()
    async with asgi_controlplane(_config(database_url, opa_bin, kek, None)) as (admin, internal, state):
        broker = await Broker(admin, internal, state).setup(kek)
        refused = await broker.resolve("alice", idp.mint("alice", [], AUDIENCE))
        assert refused.status_code == 403 and refused.json()["error"] == "subject_verification_unconfigured"
        assert "GATEWAY_JWKS_URL" in refused.json()["message"]
        assert await broker.uses() == [("alice", "refused", "subject_verification_unconfigured")]
        created = await admin.post("/v1/credentials", json={"name": "k", "kind": "bearer", "secret": {"token": "t"}})
        bearer = created.json()
        await admin.delete(f"/v1/credential-bindings/{broker.binding}")
        bind = {"server": SERVER, "subject": {"kind": "everyone"}, "credential_id": bearer["id"]}
        broker.binding = (await admin.post("/v1/credential-bindings", json=bind)).json()["id"]
        broker.credential, broker.version = bearer["id"], bearer["fingerprint"]
        static = await broker.resolve("alice", None)
        assert static.status_code == 200 and static.json()["headers"] == {"authorization": "Bearer t"}
