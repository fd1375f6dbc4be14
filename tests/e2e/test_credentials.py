"""End to end: credential brokering with real upstreams that require each kind.

A real stack (``gateway serve`` with a KEK, OPA, PostgreSQL), a real OAuth authorization
server (``tests/support/oauth_server.py``, authlib) and ``tests/support/authed_upstream.py``
registered once per kind, each refusing (401) any request without its credential:

* ``hdr``: static headers; ``bearer``: a static bearer token (``Authorization``);
* ``qry``: a query-parameter key; ``envsrv``: a stdio server reading ``SERVICE_TOKEN``;
* ``cc``: an OAuth client-credentials token (JWT verified with the AS's keys);
* ``tx``: an RFC 8693 token-exchange token, ``sub`` = the caller;
* ``ccr`` (streamable HTTP), ``ccrs`` (legacy SSE), ``ccb``: client-credentials tokens of
  ``post-client``, for what happens when the upstream refuses (401) a token the gateway cached.

The upstream reports what it saw as digests (``whoami``, ``/_seen``), so each test checks
which identity arrived, and that the caller's own token never did.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from gateway.config import OPA_TOKEN_LABEL, Secret, derived_token
from gateway.devtools.stack import LocalStack, sample_policy_modules
from tests.e2e.helpers import client
from tests.support import authed_upstream, oauth_server, pg

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.anyio, pytest.mark.timeout(300)]

UPSTREAM = Path(__file__).resolve().parents[1] / "support" / "authed_upstream.py"
CANARY = {
    "hdr": "canary-hdr-5f1b0c9e27d4",
    "bearer": "canary-bearer-8e2d41a7c3b6",
    "qry": "canary-qry-3c7a9d05e1f2",
    "env": "canary-env-a41e6b2d90c7",
    "env2": "canary-env2-77e1d3a0b5c4",
    "alice": "canary-alice-hdr-0d9c2e4f6a81",
    "rotated": "canary-rotated-b3f6a1e9c2d0",
    "qsse": "canary-qsse-6e0f2b9d14a3",
}
"""Secrets planted in the store; none may show up anywhere but at the upstream."""
INTERNAL = "internal-token-for-the-credentials-test"
REFUSED = ("ccr", "ccrs", "ccb")
"""Servers whose upstream the tests make refuse the gateway's cached token."""


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _digest(value: str) -> str:
    return _sha(value)[:12]


class Fleet:
    """The stack, the AS, the upstreams and the ids the tests use."""

    def __init__(self, stack: LocalStack, oauth: oauth_server.RunningOAuthServer) -> None:
        self.stack, self.oauth = stack, oauth
        self.upstreams: dict[str, authed_upstream.RunningUpstream] = {}
        self.credentials: dict[str, str] = {}
        self.bindings: dict[str, str] = {}

    def credential(
        self, key: str, name: str, kind: str, secret: dict[str, Any], config: dict[str, Any] | None = None
    ) -> str:
        body: dict[str, Any] = {"name": name, "kind": kind, "secret": secret}
        if config is not None:
            body["config"] = config
        self.credentials[key] = self.stack.admin("POST", "/v1/credentials", body)["id"]
        return self.credentials[key]

    def bind(self, key: str, server: str, credential: str, kind: str = "everyone", value: str | None = None) -> str:
        subject: dict[str, Any] = {"kind": kind} if value is None else {"kind": kind, "value": value}
        body = {"server": server, "subject": subject, "credential_id": self.credentials[credential]}
        self.bindings[key] = self.stack.admin("POST", "/v1/credential-bindings", body)["id"]
        return self.bindings[key]

    def token(self, sub: str, roles: tuple[str, ...] = ("viewer",)) -> str:
        return self.stack.idp.mint(sub, list(roles), self.stack.audience)

    async def whoami(self, sub: str, server: str, roles: tuple[str, ...] = ("viewer",)) -> dict[str, Any]:
        async with client(self.stack, self.token(sub, roles), mode="legacy") as c:
            result = await c.call_tool(f"{server}__whoami", {})
        assert not result.is_error, result
        return json.loads(result.content[0].text)  # type: ignore[union-attr,no-any-return]

    async def refusal(self, sub: str, server: str, roles: tuple[str, ...] = ("viewer",)) -> dict[str, Any]:
        """The error data of a call the gateway refuses."""
        async with client(self.stack, self.token(sub, roles), mode="legacy") as c:
            with pytest.raises(MCPError) as refused:
                await c.call_tool(f"{server}__whoami", {})
        data: dict[str, Any] = refused.value.error.data
        return data


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[Fleet]:
    run_dir = tmp_path_factory.mktemp("creds")
    kek = base64.b64encode(os.urandom(32)).decode()
    with ExitStack() as es:
        database_url = es.enter_context(pg.throwaway_database(pg_admin_url))
        stack = es.enter_context(LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin)))
        stack.extra_env["GATEWAY_CREDENTIALS_KEK"] = kek
        stack.extra_env["GATEWAY_INTERNAL_TOKEN"] = INTERNAL
        oauth = es.enter_context(
            oauth_server.start_subprocess(
                run_dir, token_ttl=6, subject_jwks=run_dir / "idp" / "jwks.json", subject_issuer=stack.idp.issuer
            )
        )
        stack.start_gateway()
        fleet = Fleet(stack, oauth)
        jwks, iss = f"{oauth.url}/jwks.json", oauth.url
        specs: dict[str, dict[str, Any]] = {
            "hdr": {"require": [f"header:X-Api-Key=sha256:{_sha(CANARY['hdr'])}"]},
            "bearer": {"require": [f"header:Authorization=sha256:{_sha('Bearer ' + CANARY['bearer'])}"]},
            "qry": {"require": [f"query:api_key=sha256:{_sha(CANARY['qry'])}"]},
            "cc": {"require": ["bearer-jwt"], "jwks_url": jwks, "audience": "upstream-cc", "issuer": iss},
            "tx": {"require": ["bearer-jwt"], "jwks_url": jwks, "audience": "upstream-tx", "issuer": iss},
            "open": {"require": ["header:X-Api-Key"]},  # any key; bound per user below
            "qsse": {"require": [f"query:api_key=sha256:{_sha(CANARY['qsse'])}"], "transport": "sse"},
            "ccr": {"require": ["bearer-jwt"], "jwks_url": jwks, "audience": "upstream-ccr", "issuer": iss},
            "ccrs": {
                "require": ["bearer-jwt"],
                "jwks_url": jwks,
                "audience": "upstream-ccrs",
                "issuer": iss,
                "transport": "sse",
            },
            "ccb": {"require": ["bearer-jwt"], "jwks_url": jwks, "audience": "upstream-ccb", "issuer": iss},
        }
        for name, spec in specs.items():
            fleet.upstreams[name] = es.enter_context(authed_upstream.start_subprocess(run_dir, name=name, **spec))
            transport = "legacy_sse" if spec.get("transport") == "sse" else "streamable_http"
            stack.admin(
                "POST", "/v1/servers", {"name": name, "transport": transport, "url": fleet.upstreams[name].mcp_url}
            )
        stdio = {
            "command": sys.executable,
            "args": [
                str(UPSTREAM),
                "--transport",
                "stdio",
                "--require",
                f"env:SERVICE_TOKEN=sha256:{_sha(CANARY['env'])}",
            ],
            "env": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        }
        stack.admin("POST", "/v1/servers", {"name": "envsrv", "transport": "stdio", **stdio})
        fleet.credential("hdr", "hdr-key", "headers", {"headers": {"X-Api-Key": CANARY["hdr"]}})
        fleet.credential("bearer", "bearer-token", "bearer", {"token": CANARY["bearer"]})
        fleet.credential("qry", "qry-key", "query", {"params": {"api_key": CANARY["qry"]}})
        fleet.credential("env", "env-token", "stdio_env", {"env": {"SERVICE_TOKEN": CANARY["env"]}})
        cc = {"token_url": oauth.token_endpoint, "client_id": "basic-client", "audience": "upstream-cc"}
        fleet.credential("cc", "cc-client", "oauth_client_credentials", {"client_secret": "basic-client-secret"}, cc)
        tx = {
            "token_url": oauth.token_endpoint,
            "client_id": "post-client",
            "audience": "upstream-tx",
            "auth_method": "client_secret_post",
        }
        fleet.credential("tx", "tx-client", "oauth_token_exchange", {"client_secret": "post-client-secret"}, tx)
        fleet.credential("alice", "alice-key", "headers", {"headers": {"X-Api-Key": CANARY["alice"]}})
        fleet.credential("qsse", "qsse-key", "query", {"params": {"api_key": CANARY["qsse"]}})
        for name in REFUSED:
            post = {**tx, "audience": f"upstream-{name}"}
            fleet.credential(
                name, f"{name}-client", "oauth_client_credentials", {"client_secret": "post-client-secret"}, post
            )
        for name in ("hdr", "bearer", "qry", "cc", "qsse", *REFUSED):
            fleet.bind(name, name, name)
        fleet.bind("env", "envsrv", "env")
        fleet.bind("tx", "tx", "tx", "role", "viewer")
        fleet.bind("open-alice", "open", "alice", "user", "alice")
        fleet.bind("open-hdr", "open", "hdr", "role", "operator")
        for name in ("hdr", "bearer", "qry", "cc", "qsse", *REFUSED):
            stack.admin(
                "POST", f"/v1/servers/{name}/approve", {"comment": "reviewed"}
            )  # discovered with its everyone binding
        stack.admin("POST", "/v1/servers/envsrv/approve", {"trust_stdio": True, "comment": "reviewed"})
        # No everyone binding: discovered with a credential named at approval (for tx, one
        # that needs no caller: a client-credentials token for the same audience).
        stack.admin(
            "POST",
            "/v1/servers/open/approve",
            {"discovery_credential": fleet.credentials["hdr"], "comment": "reviewed"},
        )
        cc_tx = {**cc, "audience": "upstream-tx"}
        fleet.credential("cc-tx", "cc-tx", "oauth_client_credentials", {"client_secret": "basic-client-secret"}, cc_tx)
        stack.admin(
            "POST",
            "/v1/servers/tx/approve",
            {"discovery_credential": fleet.credentials["cc-tx"], "comment": "reviewed"},
        )
        stack.upload_and_approve_policy(sample_policy_modules())
        stack.wait_projection_active()
        yield fleet


async def test_each_kind_reaches_its_upstream_with_the_bound_identity(fleet: Fleet) -> None:
    caller = fleet.token("carol")
    seen = {name: await fleet.whoami("carol", name) for name in ("hdr", "bearer", "qry", "cc")}
    assert seen["hdr"]["header"] == _digest(CANARY["hdr"])
    assert seen["bearer"]["header"] == _digest("Bearer " + CANARY["bearer"])
    assert seen["qry"]["query"] == _digest(CANARY["qry"])
    assert (seen["cc"]["client_id"], seen["cc"]["aud"]) == ("basic-client", "upstream-cc")
    for name, identity in seen.items():  # the caller's own token never reaches an upstream
        assert identity.get("authorization") != _digest(f"Bearer {caller}"), name


async def test_a_legacy_sse_upstream_gets_its_query_key_on_the_stream_and_every_message(fleet: Fleet) -> None:
    seen = await fleet.whoami("carol", "qsse")  # approval's discovery (the SDK's sse_client) got it too
    assert seen["query"] == _digest(CANARY["qsse"])
    assert fleet.upstreams["qsse"].rejected()["count"] == 0


async def test_a_stdio_server_gets_its_secret_in_its_environment(fleet: Fleet) -> None:
    seen = await fleet.whoami("carol", "envsrv")
    assert seen["env"] == _digest(CANARY["env"])


async def test_token_exchange_makes_the_upstream_see_the_caller(fleet: Fleet) -> None:
    for sub in ("dora", "erin"):
        seen = await fleet.whoami(sub, "tx")
        assert (seen["sub"], seen["aud"]) == (sub, "upstream-tx")
        assert seen["act"] == {"sub": "post-client"}


async def test_the_most_specific_binding_wins_and_a_caller_with_none_is_refused(fleet: Fleet) -> None:
    upstream = fleet.upstreams["open"]
    assert (await fleet.whoami("alice", "open", ("operator",)))["header"] == _digest(CANARY["alice"])  # user > role
    assert (await fleet.whoami("olga", "open", ("operator",)))["header"] == _digest(CANARY["hdr"])
    before = len(upstream.seen())
    refused = await fleet.refusal("victor", "open", ("viewer",))  # no binding matches a viewer
    assert refused["category"] == "credential_required"
    assert len(upstream.seen()) == before  # never sent unauthenticated


def _uses(fleet: Fleet, credential: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = fleet.stack.admin(
        "GET", f"/v1/credentials/{fleet.credentials[credential]}/uses?limit=1000"
    )["items"]
    return items


async def test_resolved_material_is_cached_and_every_resolution_audited(fleet: Fleet) -> None:
    await fleet.whoami("frank", "hdr")  # resolved (or already cached by an earlier call)
    before = _uses(fleet, "hdr")
    for sub in ("frank", "gina", "hank"):
        await fleet.whoami(sub, "hdr")
    assert _uses(fleet, "hdr") == before  # no round trip to the broker while cached
    resolved = [u for u in before if u["outcome"] == "resolved" and u["dataplane_id"] == "dp-local"]
    assert resolved and all(u["server"] in ("hdr", "open") for u in resolved)
    assert any(u["dataplane_id"] == "control-plane" for u in before)  # approval's discovery


async def test_an_expired_oauth_token_is_fetched_again(fleet: Fleet) -> None:
    first = await fleet.whoami("ivan", "cc")
    issued = fleet.oauth.issued("client_credentials", "basic-client")
    deadline = time.time() + 6  # the AS issues tokens for 6 s; the broker refreshes before expiry
    while time.time() < deadline:
        await fleet.whoami("ivan", "cc")  # served with the cached token meanwhile
    second = await fleet.whoami("ivan", "cc")
    assert fleet.oauth.issued("client_credentials", "basic-client") > issued
    assert first["client_id"] == second["client_id"] == "basic-client"


async def test_a_rotated_secret_is_used_from_the_next_projection_on(fleet: Fleet) -> None:
    before = len(_uses(fleet, "bearer"))
    fleet.stack.admin(
        "POST", f"/v1/credentials/{fleet.credentials['bearer']}/rotate", {"secret": {"token": CANARY["rotated"]}}
    )
    # The upstream still wants the old token: calls fail once the rotation reaches the data plane.
    started = time.monotonic()
    while True:
        async with client(fleet.stack, fleet.token("jane"), mode="legacy") as c:
            try:
                result = await c.call_tool("bearer__whoami", {})
                failed = bool(result.is_error)
            except MCPError:
                failed = True
        if failed:
            break
        assert time.monotonic() - started < 10, "the rotation never reached the data plane"
    seen = fleet.upstreams["bearer"].rejected()
    assert seen["count"] >= 1  # the new token was presented (and refused by this upstream)
    new = [u for u in _uses(fleet, "bearer")[: len(_uses(fleet, "bearer")) - before] if u["outcome"] == "resolved"]
    assert len(new) == 1  # the new version resolved once


async def test_a_revoked_credential_stops_being_used_within_the_projection_delay(fleet: Fleet) -> None:
    upstream = fleet.upstreams["qry"]
    assert (await fleet.whoami("kate", "qry"))["query"] == _digest(CANARY["qry"])
    fleet.stack.admin("DELETE", f"/v1/credentials/{fleet.credentials['qry']}", expect=204)
    revoked = time.monotonic()
    while True:
        async with client(fleet.stack, fleet.token("kate"), mode="legacy") as c:
            try:
                await c.call_tool("qry__whoami", {})
                category = None
            except MCPError as exc:
                category = exc.error.data["category"]
        if category is not None:
            break
        assert time.monotonic() - revoked < 5, "the revocation did not take effect within 5 s"
    assert category == "credential_required"
    count = len(upstream.seen())
    await fleet.refusal("kate", "qry")
    assert len(upstream.seen()) == count


def test_no_secret_appears_in_logs_audit_decision_logs_projection_bundle_or_api(fleet: Fleet) -> None:
    stack = fleet.stack
    texts: dict[str, str] = {}
    for path in sorted(stack.run_dir.glob("*.log")):
        if path.name in {f"{name}.log" for name in fleet.upstreams}:
            continue  # the upstreams are where the secrets are meant to arrive
        texts[path.name] = path.read_text(errors="replace")
    internal = {"authorization": f"Bearer {INTERNAL}"}
    with httpx.Client(base_url=stack.control_url, timeout=30) as http:
        feed = http.get("/v1/dataplane/projection", params={"dataplane_id": "canary-check"}, headers=internal)
        texts["projection"] = feed.text
        assert feed.status_code == 200 and '"credentials"' in feed.text  # bindings are there, as metadata
        opa = {"authorization": f"Bearer {derived_token(Secret(INTERNAL), OPA_TOKEN_LABEL).reveal()}"}
        bundle = http.get("/v1/opa/bundles/gateway", headers=opa)
        assert bundle.status_code == 200
        texts["bundle"] = bundle.content.decode("latin-1")
        for path in ("/v1/credentials", "/v1/credential-bindings", "/v1/projection", "/v1/servers"):
            texts[path] = http.get(path, headers=stack.admin_headers).text
        for credential in fleet.credentials.values():
            texts[f"uses {credential}"] = http.get(
                f"/v1/credentials/{credential}/uses", headers=stack.admin_headers
            ).text
        decisions = http.get("/v1/audit/decisions", params={"limit": 500}, headers=stack.admin_headers).json()
        for item in decisions["items"]:
            detail = http.get(f"/v1/audit/decisions/{item['decision_id']}", headers=stack.admin_headers)
            texts[f"decision {item['decision_id']}"] = detail.text
    assert any('"credential"' in t for k, t in texts.items() if k.startswith("decision")), (
        "no decision saw a credential"
    )
    for name, secret in CANARY.items():
        forms = {secret, base64.b64encode(secret.encode()).decode(), secret.encode().hex()}
        for where, text in texts.items():
            for form in forms:
                assert form not in text, f"the {name} secret appears in {where}"


@contextmanager
def _long_lived_tokens(fleet: Fleet) -> Iterator[None]:
    """The AS issues 300 s tokens in the block (then 6 s again), so no token expires mid-test."""
    fleet.oauth.admin("config", {"token_ttl": 300})
    try:
        yield
    finally:
        fleet.oauth.admin("config", {"token_ttl": 6})


def _post_client_tokens(fleet: Fleet) -> int:
    return fleet.oauth.issued("client_credentials", "post-client")


async def _cache_a_long_lived_token(fleet: Fleet, sub: str, server: str) -> dict[str, Any]:
    """Call ``server`` until the gateway holds a token issued after the switch to 300 s (the
    one of approval, or of an earlier call, lives 6 s at most)."""
    before = _post_client_tokens(fleet)
    deadline = time.monotonic() + 30
    while _post_client_tokens(fleet) == before:
        assert time.monotonic() < deadline, "no new token was fetched"
        await fleet.whoami(sub, server)
    return await fleet.whoami(sub, server)


@pytest.mark.parametrize("server", ["ccr", "ccrs"])
async def test_a_token_the_upstream_refuses_is_dropped_and_the_call_retried_once_with_a_new_one(
    fleet: Fleet, server: str
) -> None:
    upstream = fleet.upstreams[server]
    with _long_lived_tokens(fleet):
        first = await _cache_a_long_lived_token(fleet, "kim", server)
        issued, refused = _post_client_tokens(fleet), upstream.rejected()["count"]
        upstream.revoke()  # as if the AS had revoked it: the upstream answers 401 to the cached token
        second = await fleet.whoami("kim", server)  # the retried call: nothing reaches the caller
        assert upstream.rejected()["count"] > refused  # the cached token was sent, and refused
        assert second["authorization"] != first["authorization"]
        assert (second["client_id"], second["aud"]) == ("post-client", f"upstream-{server}")
        assert _post_client_tokens(fleet) == issued + 1  # the token endpoint was asked once more
        third = await fleet.whoami("kim", server)  # the new token is cached from then on
        assert third["authorization"] == second["authorization"]
        assert _post_client_tokens(fleet) == issued + 1


async def test_an_upstream_that_refuses_every_token_gets_one_refresh_per_interval_not_one_per_call(
    fleet: Fleet,
) -> None:
    upstream = fleet.upstreams["ccb"]
    with _long_lived_tokens(fleet):
        await _cache_a_long_lived_token(fleet, "lena", "ccb")
        issued, refused = _post_client_tokens(fleet), upstream.rejected()["count"]
        upstream.revoke(everything=True)
        try:
            for _ in range(5):
                data = await fleet.refusal("lena", "ccb")
                assert data["category"] == "upstream_credential_rejected"
            # Each call sent its request (a retry with the one refreshed token included), and
            # the token endpoint was asked once in all: one forced refresh per interval.
            assert upstream.rejected()["count"] >= refused + 6
            assert _post_client_tokens(fleet) == issued + 1
        finally:
            upstream.reset()
        assert (await fleet.whoami("lena", "ccb"))["client_id"] == "post-client"  # the refreshed token, cached
        assert _post_client_tokens(fleet) == issued + 1
