"""The credentials admin API in-process against real PostgreSQL: write-only, lifecycle, bindings, errors."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import Config
from gateway.controlplane.oauth_users import callback_key
from gateway.credentials import Kek, Keyring, parse_kek
from gateway.db import credentials as db_credentials
from tests.controlplane.helpers import asgi_controlplane, make_config
from tests.credentials.helpers import CANARY, bodies, canary, encodings, new_kek

pytestmark = [pytest.mark.anyio, pytest.mark.db]

UNKNOWN = str(uuid.UUID(int=7))
ROUTES = [
    ("GET", "/v1/credentials"),
    ("POST", "/v1/credentials"),
    ("POST", "/v1/credentials/rewrap"),
    ("GET", f"/v1/credentials/{UNKNOWN}"),
    ("DELETE", f"/v1/credentials/{UNKNOWN}"),
    ("POST", f"/v1/credentials/{UNKNOWN}/rotate"),
    ("GET", "/v1/credential-bindings"),
    ("POST", "/v1/credential-bindings"),
    ("DELETE", f"/v1/credential-bindings/{UNKNOWN}"),
]
META = {
    "id",
    "tenant",
    "environment",
    "name",
    "kind",
    "config",
    "fingerprint",
    "kek_id",
    "created_by",
    "created_at",
    "rotated_at",
    "last_used_at",
    "revoked_at",
    "status",
}


@pytest.fixture
def kek() -> str:
    return new_kek()


@pytest.fixture
def config(database_url: str, opa_bin: Path, kek: str) -> Config:
    return make_config(database_url, opa_bin, credentials={"kek": kek})


def _keyring(kek: str) -> Keyring:
    return Keyring(parse_kek(kek, "test"))


async def _server(admin: httpx.AsyncClient, name: str = "github") -> None:
    r = await admin.post("/v1/servers", json={"name": name, "transport": "streamable_http", "url": "http://x/mcp"})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_without_a_kek_every_credentials_route_answers_503_naming_the_variable(
    cp_config: Config, method: str, path: str
) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.request(method, path, json={"name": "x", "kind": "bearer", "secret": {"token": CANARY}})
    assert r.status_code == 503
    assert r.json()["error"] == "credentials_unavailable"
    assert "GATEWAY_CREDENTIALS_KEK_FILE" in r.json()["message"]
    assert CANARY not in r.text


async def test_a_credential_is_created_shown_rotated_and_revoked_as_metadata_only(config: Config, kek: str) -> None:
    async with asgi_controlplane(config) as (admin, _, state):
        body = {"name": "gh-token", "kind": "bearer", "secret": {"token": canary("v1")}}
        created = await admin.post("/v1/credentials", json=body)
        assert created.status_code == 201, created.text
        record = created.json()
        assert set(record) == META
        assert record["name"] == "gh-token" and record["kind"] == "bearer" and record["config"] == {}
        assert record["status"] == "active" and record["created_by"] == "admin"
        assert record["kek_id"] == _keyring(kek).current.id
        assert record["rotated_at"] is None and record["last_used_at"] is None and record["revoked_at"] is None
        assert (record["tenant"], record["environment"]) == ("tenant_local", "prod")
        cid = record["id"]

        assert (await admin.get(f"/v1/credentials/{cid}")).json() == record
        assert (await admin.get("/v1/credentials")).json() == {"items": [record]}
        async with state["cp_pool"].acquire() as conn:
            opened = await db_credentials.open_credential(conn, "tenant_local", "prod", cid, _keyring(kek))
        assert opened.reveal() == {"token": canary("v1")}

        rotated = await admin.post(f"/v1/credentials/{cid}/rotate", json={"secret": {"token": canary("v2")}})
        assert rotated.status_code == 200, rotated.text
        after = rotated.json()
        assert after["id"] == cid and after["created_at"] == record["created_at"]
        assert after["rotated_at"] is not None and after["fingerprint"] != record["fingerprint"]
        async with state["cp_pool"].acquire() as conn:
            opened = await db_credentials.open_credential(conn, "tenant_local", "prod", cid, _keyring(kek))
        assert opened.reveal() == {"token": canary("v2")}

        duplicate = await admin.post("/v1/credentials", json=body)
        assert duplicate.status_code == 409 and duplicate.json()["error"] == "conflict"

        assert (await admin.delete(f"/v1/credentials/{cid}")).status_code == 204
        revoked = (await admin.get(f"/v1/credentials/{cid}")).json()
        assert revoked["status"] == "revoked" and revoked["revoked_at"] and revoked["kek_id"] is None
        assert revoked["fingerprint"] == after["fingerprint"]
        assert (await admin.delete(f"/v1/credentials/{cid}")).status_code == 204  # again: nothing changes
        assert (await admin.get(f"/v1/credentials/{cid}")).json() == revoked
        again = await admin.post(f"/v1/credentials/{cid}/rotate", json={"secret": {"token": "x"}})
        assert again.status_code == 409
        async with state["cp_pool"].acquire() as conn:
            sealed = await conn.fetchrow("SELECT wrapped_dek, nonce, ciphertext FROM credentials WHERE id = $1", cid)
        assert tuple(sealed) == (None, None, None)  # revocation destroys the secret

        reuse = await admin.post("/v1/credentials", json=body)  # a revoked credential frees its name
        assert reuse.status_code == 201 and reuse.json()["id"] != cid


async def test_equal_secrets_have_equal_fingerprints_under_one_kek(config: Config) -> None:
    async with asgi_controlplane(config) as (admin, _, _):
        fps = []
        for name, token in (("a", "same"), ("b", "same"), ("c", "other")):
            r = await admin.post("/v1/credentials", json={"name": name, "kind": "bearer", "secret": {"token": token}})
            fps.append(r.json()["fingerprint"])
    assert fps[0] == fps[1] != fps[2]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        pytest.param("/v1/credentials", {"name": "a", "kind": "bearer"}, 400, "secret", id="no-secret"),
        pytest.param(
            "/v1/credentials",
            {"name": "a", "kind": "bearer", "secret": {"token": CANARY}, CANARY: 1},
            400,
            "body",
            id="extra-field",
        ),
        pytest.param(
            "/v1/credentials",
            {"name": CANARY, "kind": "bearer", "secret": {"token": "t"}},
            400,
            "name",
            id="canary-as-name",
        ),
        pytest.param(
            "/v1/credentials",
            {"name": "a", "kind": CANARY, "secret": {"token": CANARY}},
            400,
            "kind",
            id="canary-as-kind",
        ),
        pytest.param(
            "/v1/credentials",
            {"name": "a", "kind": "bearer", "secret": {"token": CANARY + " x"}},
            400,
            "secret.token",
            id="bad-token",
        ),
        pytest.param(
            "/v1/credentials",
            {"name": "a", "kind": "headers", "secret": {"headers": {"Host": CANARY}}},
            400,
            "'host'",
            id="host-header",
        ),
        pytest.param(
            "/v1/credentials",
            {"name": "a", "kind": "headers", "secret": {"headers": {"X-A": CANARY + "\r\nX-B: 1"}}},
            400,
            "secret.headers",
            id="header-injection",
        ),
        pytest.param(
            "/v1/credentials",
            {"name": "a", "kind": "stdio_env", "secret": {"env": {"LD_PRELOAD": CANARY}}},
            400,
            "LD_*",
            id="ld-preload",
        ),
        pytest.param(
            "/v1/credentials",
            {"name": "a", "kind": "query", "secret": {"params": {CANARY + "=&": "v"}}},
            400,
            "secret.params",
            id="param-name",
        ),
        pytest.param(
            f"/v1/credentials/{UNKNOWN}/rotate", {"secret": {"token": CANARY}}, 404, "not found", id="rotate-unknown"
        ),
        pytest.param("/v1/credentials/not-a-uuid/rotate", {"secret": {}}, 400, "id", id="rotate-bad-id"),
        pytest.param(
            "/v1/credential-bindings",
            {"server": "github", "subject": {"kind": "everyone", "value": CANARY}, "credential_id": UNKNOWN},
            400,
            "subject.value",
            id="everyone-with-value",
        ),
        pytest.param(
            "/v1/credential-bindings",
            {"server": "github", "subject": {"kind": "user"}, "credential_id": UNKNOWN},
            400,
            "subject.value",
            id="user-without-value",
        ),
        pytest.param(
            "/v1/credential-bindings",
            {"server": "github", "subject": {"kind": "group", "value": "x"}, "credential_id": UNKNOWN},
            400,
            "subject.kind",
            id="unknown-subject-kind",
        ),
        pytest.param(
            "/v1/credential-bindings",
            {"server": "github", "subject": {"kind": "everyone"}, "credential_id": CANARY},
            400,
            "credential_id",
            id="bad-credential-id",
        ),
        pytest.param(
            "/v1/credential-bindings",
            {"server": "Bad Server", "subject": {"kind": "everyone"}, "credential_id": UNKNOWN},
            400,
            "server",
            id="bad-server",
        ),
    ],
)
async def test_bad_requests_name_the_field_and_never_echo_a_value(
    config: Config, path: str, body: dict[str, Any], status: int, field: str
) -> None:
    async with asgi_controlplane(config) as (admin, _, _):
        r = await admin.post(path, json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["message"]
    assert CANARY not in r.text


async def test_bindings_are_created_listed_filtered_and_deleted(config: Config) -> None:
    async with asgi_controlplane(config) as (admin, _, _):
        await _server(admin, "github")
        await _server(admin, "jira")
        one = (await admin.post("/v1/credentials", json=bodies("one")[0])).json()["id"]
        two = (await admin.post("/v1/credentials", json=bodies("two")[0])).json()["id"]

        async def bind(server: str, subject: dict[str, Any], credential_id: str) -> httpx.Response:
            body = {"server": server, "subject": subject, "credential_id": credential_id}
            return await admin.post("/v1/credential-bindings", json=body)

        everyone = await bind("github", {"kind": "everyone"}, one)
        assert everyone.status_code == 201, everyone.text
        b = everyone.json()
        assert set(b) == {
            "id",
            "tenant",
            "environment",
            "server",
            "subject",
            "credential_id",
            "created_by",
            "created_at",
        }
        assert b["subject"] == {"kind": "everyone", "value": None} and b["credential_id"] == one
        alice = (await bind("github", {"kind": "user", "value": "alice"}, two)).json()
        jira = (await bind("jira", {"kind": "role", "value": "dev"}, one)).json()

        assert (await bind("github", {"kind": "everyone", "value": None}, two)).status_code == 409
        assert (await bind("github", {"kind": "user", "value": "alice"}, one)).status_code == 409
        assert (await bind("nope", {"kind": "everyone"}, one)).status_code == 404
        assert (await bind("jira", {"kind": "everyone"}, UNKNOWN)).status_code == 404

        listed = (await admin.get("/v1/credential-bindings")).json()["items"]
        assert [x["id"] for x in listed] == [b["id"], alice["id"], jira["id"]]
        by_server = (await admin.get("/v1/credential-bindings", params={"server": "jira"})).json()["items"]
        assert [x["id"] for x in by_server] == [jira["id"]]
        by_cred = (await admin.get("/v1/credential-bindings", params={"credential_id": two})).json()["items"]
        assert [x["id"] for x in by_cred] == [alice["id"]]
        bad = await admin.get("/v1/credential-bindings", params={"credential_id": "x"})
        assert bad.status_code == 400 and "credential_id" in bad.json()["message"]

        assert (await admin.delete(f"/v1/credential-bindings/{alice['id']}")).status_code == 204
        assert (await admin.delete(f"/v1/credential-bindings/{alice['id']}")).status_code == 404
        assert (await admin.delete("/v1/credential-bindings/x")).status_code == 400

        # revoking a credential deletes its bindings, and a revoked credential cannot be bound
        assert (await admin.delete(f"/v1/credentials/{one}")).status_code == 204
        assert (await admin.get("/v1/credential-bindings")).json()["items"] == []
        assert (await bind("github", {"kind": "everyone"}, one)).status_code == 409


async def test_no_response_header_or_log_line_ever_carries_a_secret(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    responses: list[httpx.Response] = []
    async with asgi_controlplane(config) as (admin, _, _):
        await _server(admin)
        ids = []
        for body in bodies():
            r = await admin.post("/v1/credentials", json=body)
            assert r.status_code == 201, r.text
            responses.append(r)
            ids.append(r.json()["id"])
        responses.append(await admin.post("/v1/credentials", json=bodies()[0]))  # 409 duplicate
        responses.append(await admin.get("/v1/credentials"))
        for cid, body in zip(ids, bodies("r"), strict=True):
            responses.append(await admin.get(f"/v1/credentials/{cid}"))
            secret = {k: (canary("rotated") if isinstance(v, str) else v) for k, v in body["secret"].items()}
            responses.append(await admin.post(f"/v1/credentials/{cid}/rotate", json={"secret": secret}))
            responses.append(await admin.post(f"/v1/credentials/{cid}/rotate", json={"secret": {"x": CANARY}}))
        binding = {"server": "github", "subject": {"kind": "role", "value": "dev"}, "credential_id": ids[0]}
        responses.append(created := await admin.post("/v1/credential-bindings", json=binding))
        responses.append(await admin.get("/v1/credential-bindings"))
        responses.append(await admin.post("/v1/credentials/rewrap"))
        responses.append(await admin.delete(f"/v1/credential-bindings/{created.json()['id']}"))
        responses.append(await admin.post("/v1/credentials", content=b'{"secret": {"token": "' + CANARY.encode()))
        for cid in ids:
            responses.append(await admin.delete(f"/v1/credentials/{cid}"))
            responses.append(await admin.get(f"/v1/credentials/{cid}"))
        responses.append(await admin.get("/v1/credentials"))
    assert {r.status_code for r in responses} >= {200, 201, 204, 400, 409}
    for r in responses:
        seen = r.content + str(r.headers).encode()
        for form in encodings(CANARY):
            assert form not in seen, (r.request.method, r.request.url, r.status_code)
    assert any("credential" in rec.getMessage() and "created" in rec.getMessage() for rec in caplog.records)
    logged = caplog.text.encode()
    for form in encodings(CANARY):
        assert form not in logged


async def test_rewrap_under_a_rotated_kek_leaves_every_credential_readable_with_the_new_key_only(
    database_url: str, opa_bin: Path, tmp_path: Path
) -> None:
    old, new = new_kek(), new_kek()
    async with asgi_controlplane(make_config(database_url, opa_bin, credentials={"kek": old})) as (admin, _, _):
        ids = [(await admin.post("/v1/credentials", json=b)).json()["id"] for b in bodies()]
    old_file = tmp_path / "old.kek"
    old_file.write_text(old)
    old_file.chmod(0o600)
    rotated = make_config(database_url, opa_bin, credentials={"kek": new, "kek_previous_files": [str(old_file)]})
    new_id = parse_kek(new, "test").id
    async with asgi_controlplane(rotated) as (admin, _, state):
        result = await admin.post("/v1/credentials/rewrap")
        assert result.status_code == 200, result.text
        answer = result.json()
        assert {k: answer[k] for k in ("current_kek_id", "rewrapped", "failed", "by_kek")} == {
            "current_kek_id": new_id,
            "rewrapped": len(ids),
            "failed": [],
            "by_kek": {new_id: 6},
        }
        assert answer["remaining"] == 0 and set(answer["oauth_users"]) == {
            "credential_user_tokens",
            "oauth_connects",
            "credential_oauth_clients",
        }
        again = (await admin.post("/v1/credentials/rewrap")).json()
        assert again["rewrapped"] == 0 and again["by_kek"] == {new_id: 6}
        listed = (await admin.get("/v1/credentials")).json()["items"]
        assert {c["kek_id"] for c in listed} == {new_id}
        only_new = Keyring(Kek(parse_kek(new, "test").key))
        async with state["cp_pool"].acquire() as conn:
            for cid, body in zip(ids, bodies(), strict=True):
                opened = await db_credentials.open_credential(conn, "tenant_local", "prod", cid, only_new)
                assert CANARY in opened.to_bytes().decode(), body["kind"]


async def test_a_binding_must_suit_the_servers_transport_and_makes_it_require_a_credential(config: Config) -> None:
    async with asgi_controlplane(config) as (admin, _, _):
        await _server(admin, "web")
        stdio = {"name": "local", "transport": "stdio", "command": "/bin/true"}
        assert (await admin.post("/v1/servers", json=stdio)).status_code == 201
        env = (
            await admin.post(
                "/v1/credentials", json={"name": "e", "kind": "stdio_env", "secret": {"env": {"T": CANARY}}}
            )
        ).json()
        key = (
            await admin.post("/v1/credentials", json={"name": "k", "kind": "bearer", "secret": {"token": CANARY}})
        ).json()
        for server, credential in (("web", env), ("local", key)):
            body = {"server": server, "subject": {"kind": "everyone"}, "credential_id": credential["id"]}
            r = await admin.post("/v1/credential-bindings", json=body)
            assert r.status_code == 400 and r.json()["message"].startswith("credential_id"), r.text
        assert (await admin.get("/v1/servers/web")).json()["requires_credential"] is False
        for server, credential in (("web", key), ("local", env)):
            body = {"server": server, "subject": {"kind": "everyone"}, "credential_id": credential["id"]}
            assert (await admin.post("/v1/credential-bindings", json=body)).status_code == 201
        assert (await admin.get("/v1/servers/web")).json()["requires_credential"] is True
        await admin.delete(f"/v1/credentials/{key['id']}")
        assert (await admin.get("/v1/servers/web")).json()["requires_credential"] is True  # stays: callers refused


async def test_a_server_that_requires_a_credential_is_never_discovered_without_one(config: Config) -> None:
    async with asgi_controlplane(config) as (admin, _, _):
        body = {
            "name": "locked",
            "transport": "streamable_http",
            "url": "http://127.0.0.1:9/mcp",
            "requires_credential": True,
        }
        assert (await admin.post("/v1/servers", json=body)).status_code == 201
        r = await admin.post("/v1/servers/locked/approve", json={"comment": "reviewed"})
        assert r.status_code == 400 and r.json()["message"].startswith("discovery_credential"), r.text
        env = (
            await admin.post(
                "/v1/credentials", json={"name": "e", "kind": "stdio_env", "secret": {"env": {"T": CANARY}}}
            )
        ).json()
        r = await admin.post(
            "/v1/servers/locked/approve", json={"discovery_credential": env["id"], "comment": "reviewed"}
        )
        assert r.status_code == 400 and "carries nothing" in r.json()["message"], r.text
        assert CANARY not in r.text


async def test_a_configured_per_user_oauth_client_shows_the_redirect_uri_to_register(config: Config) -> None:
    endpoints = {
        "client_id": "gw",
        "authorization_endpoint": "https://as.example.com/authorize",
        "token_endpoint": "https://as.example.com/token",
    }
    async with asgi_controlplane(config) as (admin, _, _):
        bodies_ = {
            "configured": {"name": "c1", "kind": "oauth_authorization_code", "config": endpoints, "secret": {}},
            "pinned": {
                "name": "c2",
                "kind": "oauth_authorization_code",
                "config": {**endpoints, "issuer": "https://as.example.com"},
                "secret": {},
            },
            "discovered": {"name": "c3", "kind": "oauth_authorization_code", "secret": {}},
        }
        made = {k: (await admin.post("/v1/credentials", json=b)).json() for k, b in bodies_.items()}
        public = config.control_plane.public_url
        for key, issuer in (("configured", "configured"), ("pinned", "https://as.example.com")):
            expected = f"{public}/v1/oauth/callback/{callback_key(made[key]['id'], issuer)}"
            assert made[key]["redirect_uri"] == expected
            assert (await admin.get(f"/v1/credentials/{made[key]['id']}")).json()["redirect_uri"] == expected
        assert "redirect_uri" not in made["discovered"]  # registered by the gateway itself, per issuer found
        listed = {c["name"]: c for c in (await admin.get("/v1/credentials")).json()["items"]}
        assert listed["c1"]["redirect_uri"] == made["configured"]["redirect_uri"]
        assert made["configured"]["redirect_uri"] != made["pinned"]["redirect_uri"]
