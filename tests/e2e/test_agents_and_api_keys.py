"""Identity richness end to end (issue 8), real parts only: ``gateway serve`` with its OPA
sidecar, PostgreSQL, the sample upstream and the ``mcp`` SDK client.

* Agent context: real JWTs with ``azp``, ``groups`` and RFC 8693 ``act`` chains reach a real
  OPA decision (a policy that denies a delegation deeper than one hop) and its decision log;
  a chain deeper than the gateway accepts is a 401 ``delegation_too_deep``.
* API keys: created through the admin API (shown once), used as ``Authorization: Bearer gwk_...``
  by an SDK client, audited by key id, listed without secrets, revoked (refused within a
  measured bound), stored only as a hash (``pg_dump``), failed attempts throttled per address
  and per key id (429 + ``Retry-After``), and never in any log.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from gateway.devtools.stack import LocalStack
from tests.e2e.helpers import audit_item, client, recorded
from tests.support import pg
from tests.support.logs import files_containing

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.anyio]

FAILURE_BURST = 3
REVOCATION_BOUND = 5.0
"""Seconds from ``DELETE /v1/api-keys/{id}`` answering until the data plane refuses the key
(NOTIFY wakes the projection long poll: normally well under one second)."""
KEYS: list[dict[str, Any]] = []
"""Every key this module created (their secrets are the log canaries)."""

POLICY = """# METADATA
# scope: package
# schemas:
#   - input: schema.decision_input
package gateway

default allow := false

too_deep if count(input.subject.delegation) > 1

allow if {
	not too_deep
	input.subject.credential_kind == "api_key"
	"operator" in input.subject.roles
}

allow if {
	not too_deep
	input.subject.credential_kind == "jwt"
	input.subject.agent == "research-agent"
	"eng" in input.subject.groups
}

reasons := ["delegation_too_deep"] if too_deep
else := ["granted"] if allow
else := ["no_grant"]

decision := {"allow": allow, "reasons": reasons, "obligations": {}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[LocalStack]:
    run_dir = tmp_path_factory.mktemp("agents")
    with (
        pg.throwaway_database(pg_admin_url) as database_url,
        LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin)) as s,
    ):
        s.extra_env.update(
            {"GATEWAY_API_KEY_FAILURE_BURST": str(FAILURE_BURST), "GATEWAY_API_KEY_FAILURE_INTERVAL": "300"}
        )
        s.start_upstream()
        s.start_gateway()
        s.register_and_approve_server("demo", s.upstream_url, "sample upstream")
        s.upload_and_approve_policy({"gateway.rego": POLICY})
        s.wait_projection_active()
        yield s


def agent_token(stack: LocalStack, act: dict[str, Any] | None, **extra: Any) -> str:
    claims: dict[str, Any] = {"azp": "research-agent", "groups": ["eng"], **extra}
    if act is not None:
        claims["act"] = act
    return stack.idp.mint("alice", ["viewer"], stack.audience, extra_claims=claims)


def chain(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": f"agent-{depth}", "client_id": f"client-{depth}"}
    for level in range(depth - 1, 0, -1):
        act = {"sub": f"agent-{level}", "client_id": f"client-{level}", "act": act}
    return act


def create_key(stack: LocalStack, **body: Any) -> dict[str, Any]:
    resp = httpx.post(
        f"{stack.control_url}/v1/api-keys",
        json={"subject": "ci-bot", "roles": ["operator"], "ttl": 3600, **body},
        headers=stack.admin_headers,
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    assert resp.headers["cache-control"] == "no-store"
    created: dict[str, Any] = resp.json()
    KEYS.append(created)
    wait_version(stack, created["projection_version"])
    return created


def wait_version(stack: LocalStack, version: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = stack.admin("GET", "/v1/projection")
        if (state.get("active_version") or 0) >= version:
            return
        time.sleep(0.05)
    raise AssertionError(f"projection {version} not active after {timeout}s")


def initialize(stack: LocalStack, credential: str, source: str = "127.0.0.1") -> httpx.Response:
    """One handshake-era ``initialize`` with ``credential``, sent from the loopback address ``source``."""
    body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30) as http:
        return http.post(f"{stack.data_url}/mcp", json=body, headers={"authorization": f"Bearer {credential}"})


def wrong(key: str) -> str:
    return key[:-6] + ("AAAAAA" if not key.endswith("AAAAAA") else "BBBBBB")


async def test_the_agent_context_reaches_a_real_opa_decision_and_its_log(stack: LocalStack) -> None:
    async with client(stack, agent_token(stack, chain(1))) as c:
        result = await c.call_tool("demo__echo", {"text": "one hop"})
        assert not result.is_error
    async with client(stack, agent_token(stack, chain(2))) as c:
        with pytest.raises(MCPError) as denied:
            await c.call_tool("demo__echo", {"text": "two hops"})
    data = denied.value.error.data
    assert data["category"] == "policy_denied" and data["reasons"] == ["delegation_too_deep"]
    logged = audit_item(stack, data["decision_id"], opa_logged=True)["opa_decision_log"]
    subject = logged["input"]["subject"]
    assert subject["delegation"] == [
        {"sub": "agent-1", "client_id": "client-1"},
        {"sub": "agent-2", "client_id": "client-2"},
    ]
    assert subject["agent"] == "research-agent" and subject["groups"] == ["eng"]
    assert subject["credential_kind"] == "jwt" and subject["key_id"] is None
    assert "claims" not in subject  # the mask erases the raw claims, the derived context stays


async def test_a_token_without_the_agent_or_group_is_denied(stack: LocalStack) -> None:
    token = stack.idp.mint("alice", ["viewer"], stack.audience, extra_claims={"groups": ["sales"]})
    async with client(stack, token) as c:
        with pytest.raises(MCPError) as denied:
            await c.call_tool("demo__echo", {"text": "x"})
    assert denied.value.error.data["reasons"] == ["no_grant"]


def test_a_chain_deeper_than_eight_is_a_401_with_its_category(stack: LocalStack) -> None:
    assert initialize(stack, agent_token(stack, chain(8))).status_code == 200
    resp = initialize(stack, agent_token(stack, chain(9)))
    assert resp.status_code == 401
    assert resp.json() == {"error": "delegation_too_deep"}
    assert 'error_description="delegation_too_deep"' in resp.headers["www-authenticate"]


async def test_an_api_key_is_created_used_audited_listed_and_revoked(stack: LocalStack) -> None:
    created = create_key(stack, description="nightly CI")
    key_id, key = created["id"], created["key"]
    assert key.startswith(f"gwk_{key_id}_") and len(key) == 4 + 16 + 1 + 43
    assert created["status"] == "active" and created["created_by"] == "admin" and created["roles"] == ["operator"]

    async with client(stack, key) as c:
        result = await c.call_tool("demo__echo", {"text": "from a machine agent"})
        assert not result.is_error
        assert not (await c.call_tool("demo__echo", {"text": "again"})).is_error  # the cached verification
    assert recorded(stack)["last_authorization"] != f"Bearer {key}"  # never forwarded upstream

    deadline = time.monotonic() + 15  # the data plane ships audit events in batches
    while not (events := stack.admin("GET", "/v1/audit/decisions?subject=ci-bot&action=tools/call")["items"]):
        assert time.monotonic() < deadline, "the key's calls never reached the audit log"
        time.sleep(0.1)
    assert events and {e["client_id"] for e in events} == {f"api_key:{key_id}"}
    logged = audit_item(stack, events[0]["decision_id"], opa_logged=True)["opa_decision_log"]["input"]["subject"]
    assert logged["credential_kind"] == "api_key" and logged["key_id"] == key_id and logged["sub"] == "ci-bot"
    assert logged["issuer"] == "urn:gateway:api-key" and logged["roles"] == ["operator"]

    listed = {item["id"]: item for item in stack.admin("GET", "/v1/api-keys")["items"]}
    assert listed[key_id]["description"] == "nightly CI" and listed[key_id]["status"] == "active"
    assert not any(name in listed[key_id] for name in ("key", "hash", "secret_hash"))

    assert initialize(stack, key).status_code == 200
    resp = httpx.delete(f"{stack.control_url}/v1/api-keys/{key_id}", headers=stack.admin_headers, timeout=30)
    revoked_at = time.monotonic()
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "revoked" and resp.json()["revoked_by"] == "admin"
    while (status := initialize(stack, key).status_code) == 200:
        assert time.monotonic() - revoked_at < REVOCATION_BOUND, "revoked key still accepted"
        time.sleep(0.02)
    took = time.monotonic() - revoked_at
    assert status == 401
    print(f"revocation took effect on the data plane after {took * 1000:.0f} ms")
    again = httpx.delete(f"{stack.control_url}/v1/api-keys/{key_id}", headers=stack.admin_headers, timeout=30)
    assert again.status_code == 409
    listed = {item["id"]: item for item in stack.admin("GET", "/v1/api-keys")["items"]}
    assert listed[key_id]["status"] == "revoked"


def test_bad_create_requests_are_400_naming_the_field(stack: LocalStack) -> None:
    for body, field in [
        ({"roles": ["x"]}, "subject"),
        ({"subject": " "}, "subject"),
        ({"subject": "s", "ttl": 0}, "ttl"),
        ({"subject": "s", "ttl": 10, "expires_at": "2030-01-01T00:00:00Z"}, "expires_at or ttl"),
        ({"subject": "s", "expires_at": "2000-01-01T00:00:00Z"}, "future"),
        ({"subject": "s", "ttl": 10 * 365 * 86400}, "days ahead"),
        ({"subject": "s", "roles": "operator"}, "roles"),
        ({"subject": "s", "key": "gwk_mine"}, "body"),
    ]:
        resp = httpx.post(f"{stack.control_url}/v1/api-keys", json=body, headers=stack.admin_headers, timeout=30)
        assert resp.status_code == 400, body
        assert field in resp.json()["message"], (body, resp.json())
    assert httpx.delete(f"{stack.control_url}/v1/api-keys/nothex", headers=stack.admin_headers).status_code == 400
    missing = httpx.delete(f"{stack.control_url}/v1/api-keys/0123456789abcdef", headers=stack.admin_headers)
    assert missing.status_code == 404


def _pg_dump() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), key=lambda p: int(Path(p).parts[-3]))
    return found[-1] if found else shutil.which("pg_dump")


def test_the_database_holds_the_hash_never_the_key(stack: LocalStack) -> None:
    pg_dump = _pg_dump()
    if pg_dump is None:
        pytest.skip("no pg_dump binary (looked in /usr/lib/postgresql/*/bin and PATH)")
    created = create_key(stack, subject="dump-check")
    out = subprocess.run([pg_dump, "--no-owner", "--dbname", stack.database_url], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    dump = out.stdout
    assert b"COPY public.api_keys " in dump and created["id"].encode() in dump and b"$argon2id$" in dump
    for item in KEYS:
        secret = item["key"].split("_", 2)[2]
        assert item["key"].encode() not in dump and secret.encode() not in dump


def test_failed_attempts_are_throttled_per_address_and_per_key_id(stack: LocalStack) -> None:
    first, second = create_key(stack, subject="svc-a")["key"], create_key(stack, subject="svc-b")["key"]
    attacker, other = "127.0.0.3", "127.0.0.4"
    for _ in range(FAILURE_BURST):
        assert initialize(stack, wrong(first), attacker).status_code == 401
    limited = initialize(stack, wrong(first), attacker)
    assert limited.status_code == 429 and limited.json() == {"error": "too_many_failed_attempts"}
    assert 1 <= int(limited.headers["retry-after"]) <= 300
    # The address is throttled: even a right key is refused unchecked ...
    assert initialize(stack, second, attacker).status_code == 429
    # ... and so is the attacked key id from anywhere, until it regains an attempt;
    assert initialize(stack, first, other).status_code == 429
    # other keys from other addresses are unaffected, and a key verified once is never throttled.
    assert initialize(stack, second, other).status_code == 200
    assert initialize(stack, second, attacker).status_code == 200


def test_no_key_or_secret_reaches_any_log(stack: LocalStack) -> None:
    assert KEYS, "the tests above created keys"
    assert files_containing(stack.run_dir, f"api key {KEYS[0]['id']} created"), "the gateway logged its key events"
    for item in KEYS:
        for canary in (item["key"], wrong(item["key"]), item["key"].split("_", 2)[2]):
            assert not files_containing(stack.run_dir, canary), canary
