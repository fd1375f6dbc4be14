"""End to end, with real parts only: ``gateway serve`` (both planes), the real
OPA — the ``opa`` sidecar it supervises, then the same OPA embedded in the gateway process
(``GATEWAY_DECISION_ENGINE=embedded``): every test runs against both engines —, a real
PostgreSQL, the sample upstream MCP server (recording what it receives) and the ``mcp`` SDK
``Client`` in both protocol eras, all over loopback."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from gateway.devtools.stack import LocalStack, sample_policy_modules
from tests.e2e.helpers import audit_item, client, recorded
from tests.support.logs import files_containing
from tests.support.stacks import sample_stack

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.anyio]

CANARY = "CANARY-7f3a9c-do-not-store"


@pytest.fixture(scope="module", params=["sidecar", "embedded"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg_admin_url: str,
    opa_bin: Path,
    embedded_opa_lib: Path,
) -> Iterator[LocalStack]:
    """The e2e stack (``tests/e2e/conftest.py``), once per decision engine."""
    run_dir = tmp_path_factory.mktemp(f"stack-{request.param}")
    with sample_stack(run_dir, pg_admin_url, opa_bin, env={"GATEWAY_DECISION_ENGINE": request.param}) as s:
        yield s


def test_no_token_gets_401_with_rfc9728_resource_metadata(stack: LocalStack) -> None:
    resp = httpx.post(f"{stack.data_url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert resp.status_code == 401
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{stack.data_url}/.well-known/oauth-protected-resource/mcp"' in challenge
    prm = httpx.get(f"{stack.data_url}/.well-known/oauth-protected-resource/mcp").json()
    assert prm["resource"] == f"{stack.data_url}/mcp"
    assert prm["authorization_servers"] == [stack.idp.issuer]


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda s: s.idp.mint_with_foreign_key("alice", ["admin"], s.audience), id="foreign-key"),
        pytest.param(lambda s: s.idp.mint("alice", ["admin"], "http://other.example/mcp"), id="wrong-audience"),
        pytest.param(lambda s: s.idp.mint("alice", ["admin"], s.audience, ttl_seconds=-120), id="expired"),
        pytest.param(lambda s: "not-a-jwt", id="garbage"),
    ],
)
def test_bad_token_gets_401_invalid_token(stack: LocalStack, make_token: Any) -> None:
    resp = httpx.post(
        f"{stack.data_url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
        headers={"authorization": f"Bearer {make_token(stack)}"},
    )
    assert resp.status_code == 401
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]


async def test_modern_client_sees_and_calls_only_what_policy_allows(stack: LocalStack) -> None:
    token = stack.idp.mint("alice", ["viewer"], stack.audience, client_id="demo-agent")
    async with client(stack, token) as c:
        assert c.protocol_version == "2026-07-28"
        names = sorted(t.name for t in (await c.list_tools()).tools)
        assert names == ["demo__echo", "demo__get_weather", "demo__search_docs"]
        result = await c.call_tool("demo__get_weather", {"city": "Paris"})
        assert not result.is_error
        assert "Paris" in result.content[0].text


async def test_legacy_2025_11_25_client_gets_a_session_and_the_same_governance(stack: LocalStack) -> None:
    token = stack.idp.mint("bob", ["operator"], stack.audience)
    async with client(stack, token, mode="legacy") as c:
        assert c.protocol_version == "2025-11-25"
        names = sorted(t.name for t in (await c.list_tools()).tools)
        assert "demo__create_ticket" in names and "demo__delete_record" not in names
        result = await c.call_tool("demo__create_ticket", {"title": "VPN down", "priority": "high"})
        assert not result.is_error
        with pytest.raises(MCPError) as denied:
            await c.call_tool("demo__delete_record", {"record_id": "r-1"})
        assert denied.value.error.data["category"] == "policy_denied"
        assert denied.value.error.data["reasons"] == ["destructive_tool_requires_admin"]


async def test_denied_call_never_reaches_the_upstream(stack: LocalStack) -> None:
    httpx.delete(f"http://127.0.0.1:{stack.upstream_port}/_recorded")
    token = stack.idp.mint("alice", ["viewer"], stack.audience)
    async with client(stack, token) as c:
        with pytest.raises(MCPError) as denied:
            await c.call_tool("demo__create_ticket", {"title": "x", "priority": "low"})
        await c.call_tool("demo__echo", {"text": "after the denial"})
    data = denied.value.error.data
    assert data["category"] == "policy_denied" and data["reasons"] == ["tool_not_read_only"]
    assert [call["tool"] for call in recorded(stack)["calls"]] == ["echo"]
    item = audit_item(stack, data["decision_id"], opa_logged=True)
    assert item["allowed"] is False and item["status"] == "denied"
    assert item["reasons"] == ["tool_not_read_only"]
    assert item["policy_revision"].startswith("p")


async def test_invalid_arguments_are_a_tool_error_naming_the_field_and_never_reach_upstream(stack: LocalStack) -> None:
    httpx.delete(f"http://127.0.0.1:{stack.upstream_port}/_recorded")
    token = stack.idp.mint("bob", ["admin"], stack.audience)
    async with client(stack, token) as c:
        result = await c.call_tool("demo__create_ticket", {"title": "x", "priority": "urgent"})
        missing = await c.call_tool("demo__get_weather", {})
    assert result.is_error and "$.priority" in result.content[0].text
    assert missing.is_error and "city" in missing.content[0].text
    assert recorded(stack)["calls"] == []


async def test_per_server_endpoint_serves_original_tool_names(stack: LocalStack) -> None:
    token = stack.idp.mint("alice", ["viewer"], stack.audience)
    async with client(stack, token, path="/mcp/demo") as c:
        names = sorted(t.name for t in (await c.list_tools()).tools)
        assert names == ["echo", "get_weather", "search_docs"]
        assert not (await c.call_tool("echo", {"text": "hi"})).is_error


async def test_unknown_tool_is_a_jsonrpc_invalid_params_error(stack: LocalStack) -> None:
    token = stack.idp.mint("bob", ["admin"], stack.audience)
    async with client(stack, token) as c:
        with pytest.raises(MCPError) as err:
            await c.call_tool("demo__no_such_tool", {})
    assert err.value.error.code == -32602


def test_modern_header_mismatch_is_400_minus_32020(stack: LocalStack) -> None:
    token = stack.idp.mint("bob", ["admin"], stack.audience)
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    resp = httpx.post(
        f"{stack.data_url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}},
        headers={"authorization": f"Bearer {token}", "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32020


def test_legacy_session_is_bound_to_its_subject(stack: LocalStack) -> None:
    alice = {"authorization": f"Bearer {stack.idp.mint('alice', ['viewer'], stack.audience)}"}
    bob = {"authorization": f"Bearer {stack.idp.mint('bob', ['admin'], stack.audience)}"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    resp = httpx.post(f"{stack.data_url}/mcp", json=init, headers=alice)
    session = resp.headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    hijack = httpx.post(f"{stack.data_url}/mcp", json=listing, headers={**bob, "mcp-session-id": session})
    assert hijack.status_code == 404
    own = httpx.post(f"{stack.data_url}/mcp", json=listing, headers={**alice, "mcp-session-id": session})
    assert own.status_code == 200
    missing = httpx.post(f"{stack.data_url}/mcp", json=listing, headers=alice)
    assert missing.status_code == 400


async def test_opa_decision_log_and_runtime_audit_share_the_decision_id_without_arguments_or_tokens(
    stack: LocalStack,
) -> None:
    subject = f"canary-{uuid.uuid4().hex[:8]}"
    token = stack.idp.mint(subject, ["viewer"], stack.audience, extra_claims={"note": CANARY + "-claim"})
    async with client(stack, token) as c:
        await c.call_tool("demo__get_weather", {"city": CANARY})
        with pytest.raises(MCPError) as denied:
            await c.call_tool("demo__create_ticket", {"title": CANARY, "priority": "low"})
    item = audit_item(stack, denied.value.error.data["decision_id"], opa_logged=True)
    opa_log = item["opa_decision_log"]
    assert opa_log["revision"] == item["policy_revision"]
    assert "/input/arguments" in opa_log["erased"]
    assert "arguments" not in opa_log["input"]
    assert item["arguments_sha256"] and len(item["arguments_sha256"]) == 64
    # Wait until every request of this subject is audited and OPA's log of each has arrived.
    deadline = time.monotonic() + 15
    while True:
        items = stack.admin("GET", f"/v1/audit/decisions?subject={subject}")["items"]
        calls = [i for i in items if i["action"] == "tools/call"]
        if len(calls) == 2 and all(i["opa_logged"] for i in items):
            break
        assert time.monotonic() < deadline, f"audit incomplete: {items}"
        time.sleep(0.1)
    conn = await asyncpg.connect(stack.database_url)
    try:
        tables = [r["tablename"] for r in await conn.fetch("select tablename from pg_tables where schemaname='public'")]
        for table in tables:
            hits = await conn.fetchval(
                f'select count(*) from "{table}" t where t::text like $1 or t::text like $2',
                f"%{CANARY}%",
                f"%{token}%",
            )
            assert hits == 0, f"canary or token stored in table {table}"
    finally:
        await conn.close()
    leaked = [p for p in files_containing(stack.run_dir, CANARY) if p.name != "upstream.log"]
    leaked += files_containing(stack.run_dir, token)
    assert leaked == [], f"canary or token found in {leaked}"


async def test_approving_a_policy_version_changes_live_decisions_without_restart(stack: LocalStack) -> None:
    gateway_pid = stack.procs["gateway"].pid
    token = stack.idp.mint("alice", ["viewer"], stack.audience)
    stricter = {
        "gateway.rego": (
            "package gateway\n\n"
            'default decision := {"allow": false, "reasons": ["maintenance_window"], "obligations": {}}\n'
        )
    }
    async with client(stack, token) as c:
        assert not (await c.call_tool("demo__echo", {"text": "before"})).is_error
        version = int(stack.admin("POST", "/v1/policies", {"modules": stricter})["version"])
        approved_at = time.perf_counter()
        stack.admin("POST", f"/v1/policies/{version}/approve", {"comment": "reviewed"})
        while True:
            try:
                await c.call_tool("demo__echo", {"text": "probe"})
            except MCPError as exc:
                assert exc.error.data["reasons"] == ["maintenance_window"]
                break
            assert time.perf_counter() - approved_at < 20, "the new policy never took effect"
        elapsed_ms = (time.perf_counter() - approved_at) * 1000
    state = stack.wait_projection_active()
    assert state["policy_version"] == version
    assert stack.procs["gateway"].pid == gateway_pid and stack.procs["gateway"].poll() is None
    out = Path(stack.run_dir) / "policy_reload_ms.json"
    out.write_text(json.dumps({"approval_to_first_changed_decision_ms": round(elapsed_ms, 1)}))
    print(f"\napproval -> first changed decision: {elapsed_ms:.0f} ms")
    stack.upload_and_approve_policy(sample_policy_modules())
    stack.wait_projection_active()


def test_projection_reports_the_data_plane_and_opa_on_the_desired_version(stack: LocalStack) -> None:
    state = stack.wait_projection_active()
    assert [dp["id"] for dp in state["data_planes"]] == ["dp-local"]
    assert state["data_planes"][0]["active_version"] == state["desired_version"]
    assert len(state["opa"]) == 1 and state["opa"][0]["active_version"] == state["desired_version"]


def test_health_and_readiness_endpoints(stack: LocalStack) -> None:
    assert httpx.get(f"{stack.data_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.data_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["revision"].startswith("p")


def test_an_oversized_body_is_refused_with_413_before_it_is_parsed(stack: LocalStack) -> None:
    token = stack.idp.mint("bob", ["admin"], stack.audience)
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    big = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}}'
    assert httpx.post(f"{stack.data_url}/mcp", content=big, headers=headers).status_code == 413

    def chunks():  # no Content-Length: the limit must hold while streaming too
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    assert httpx.post(f"{stack.data_url}/mcp", content=chunks(), headers=headers).status_code == 413


def test_malformed_json_rpc_is_a_400_with_a_specific_code_and_never_reaches_the_upstream(stack: LocalStack) -> None:
    httpx.delete(f"http://127.0.0.1:{stack.upstream_port}/_recorded")
    token = stack.idp.mint("bob", ["admin"], stack.audience)
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    for body, code in (
        (b"{not json", -32700),
        (b"[]", -32600),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "x"}', -32600),
    ):
        resp = httpx.post(f"{stack.data_url}/mcp", content=body, headers=headers)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == code
    assert recorded(stack)["calls"] == []
