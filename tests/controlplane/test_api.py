"""Admin API in-process: auth, scope, servers (against a real MCP upstream), policies, projections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import Config
from gateway.controlplane.bundle import read_bundle
from tests.controlplane.helpers import (
    ADMIN_TOKEN,
    INTERNAL_TOKEN,
    MINIMAL_POLICY,
    OPA_TOKEN,
    asgi_controlplane,
    start_upstream,
)

pytestmark = [pytest.mark.anyio, pytest.mark.db]

REPO = Path(__file__).resolve().parents[2]


def _sample_policy() -> dict[str, str]:
    root = REPO / "policies" / "gateway"
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*.rego"))}


@pytest.mark.parametrize(
    ("method", "path", "token"),
    [
        pytest.param("GET", "/v1/servers", None, id="admin-no-token"),
        pytest.param("GET", "/v1/servers", "wrong", id="admin-wrong-token"),
        pytest.param("GET", "/v1/servers", INTERNAL_TOKEN, id="admin-with-internal-token"),
        pytest.param("GET", "/v1/servers", OPA_TOKEN, id="admin-with-opa-token"),
        pytest.param("GET", "/v1/opa/bundles/gateway", ADMIN_TOKEN, id="bundle-with-admin-token"),
        pytest.param("GET", "/v1/opa/bundles/gateway", INTERNAL_TOKEN, id="bundle-with-internal-token"),
        pytest.param("POST", "/v1/opa/status", INTERNAL_TOKEN, id="opa-status-with-internal-token"),
        pytest.param("POST", "/v1/opa/logs", INTERNAL_TOKEN, id="decision-logs-with-internal-token"),
        pytest.param("POST", "/v1/dataplane/credentials/resolve", OPA_TOKEN, id="broker-with-opa-token"),
        pytest.param("GET", "/v1/dataplane/projection?dataplane_id=x", OPA_TOKEN, id="dataplane-with-opa-token"),
        pytest.param("POST", "/v1/audit/events", OPA_TOKEN, id="ingest-with-opa-token"),
        pytest.param("POST", "/v1/audit/events", ADMIN_TOKEN, id="ingest-with-admin-token"),
        pytest.param("GET", "/v1/dataplane/projection?dataplane_id=x", None, id="dataplane-no-token"),
        pytest.param("GET", "/v1/no-such-route", None, id="unknown-route-still-401"),
    ],
)
async def test_requests_without_the_right_bearer_token_get_401(
    cp_config: Config, method: str, path: str, token: str | None
) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        headers = {"Authorization": f"Bearer {token}" if token else ""}
        r = await admin.request(method, path, headers=headers)
    assert r.status_code == 401
    body = r.json()
    assert body["error"] == "admin_unauthenticated"
    assert set(body) == {"error", "message", "request_id"}
    assert r.headers["www-authenticate"] == "Bearer"


async def test_scope_endpoint_returns_the_configured_scope(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.get("/v1/control-plane/scope")
    assert r.status_code == 200
    assert r.json() == {"tenant": "tenant_local", "environment": "prod"}


@pytest.mark.parametrize(
    ("body", "category"),
    [
        pytest.param({"name": "Bad", "transport": "streamable_http", "url": "http://x/mcp"}, "bad_request", id="upper"),
        pytest.param(
            {"name": "a__b", "transport": "streamable_http", "url": "http://x/mcp"}, "bad_request", id="dunder"
        ),
        pytest.param(
            {"name": "a_", "transport": "streamable_http", "url": "http://x/mcp"},
            "bad_request",
            id="trailing-underscore",
        ),
        pytest.param({"name": "a", "transport": "streamable_http", "url": "ftp://x/mcp"}, "bad_request", id="ftp-url"),
        pytest.param({"name": "a", "transport": "carrier_pigeon", "url": "http://x"}, "bad_request", id="transport"),
        pytest.param({"name": "a", "transport": "stdio", "url": "http://x"}, "bad_request", id="stdio-with-url"),
        pytest.param({"name": "a", "transport": "legacy_sse", "command": "x"}, "bad_request", id="sse-with-command"),
        pytest.param(
            {"name": "a", "transport": "streamable_http", "url": "http://x", "x": 1}, "bad_request", id="extra"
        ),
    ],
)
async def test_invalid_server_registrations_are_rejected(cp_config: Config, body: dict, category: str) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.post("/v1/servers", json=body)
    assert r.status_code == 400
    assert r.json()["error"] == category


@pytest.mark.integration
async def test_server_lifecycle_against_a_real_upstream(cp_config: Config, spawn: Any) -> None:
    url = start_upstream(spawn)
    async with asgi_controlplane(cp_config) as (admin, internal, _):
        before = (await admin.get("/v1/projection")).json()["desired_version"]
        r = await admin.post("/v1/servers", json={"name": "demo", "transport": "streamable_http", "url": url})
        assert r.status_code == 201
        created = r.json()
        assert created["status"] == "pending_approval" and created["tools"] == [] and created["approved_at"] is None
        assert (created["tenant"], created["environment"]) == ("tenant_local", "prod")
        dup = await admin.post("/v1/servers", json={"name": "demo", "transport": "streamable_http", "url": url})
        assert dup.status_code == 409 and dup.json()["error"] == "conflict"

        r = await admin.post("/v1/servers/demo/approve", json={"comment": "reviewed"})
        assert r.status_code == 200, r.text
        approved = r.json()
        assert approved["status"] == "approved" and approved["projection_version"] == before + 1
        tools = {t["name"]: t for t in approved["tools"]}
        assert set(tools) == {"echo", "get_weather", "search_docs", "create_ticket", "delete_record"}
        assert tools["delete_record"]["annotations"]["destructiveHint"] is True
        assert "inputSchema" in tools["echo"] and len(tools["echo"]["sha256"]) == 64
        assert "outputSchema" in tools["create_ticket"]

        shown = (await admin.get("/v1/servers/demo")).json()
        assert shown["tools"] == approved["tools"]
        assert [s["name"] for s in (await admin.get("/v1/servers")).json()["items"]] == ["demo"]
        missing = await admin.get("/v1/servers/nope")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"

        feed = await internal.get("/v1/dataplane/projection", params={"dataplane_id": "dp1", "active_version": 0})
        table = feed.json()
        assert feed.headers["etag"] == f'"p{before + 1}"'
        assert table["version"] == before + 1 and table["revision"] == f"p{before + 1}-pv0"
        assert table["servers"][0]["name"] == "demo" and table["servers"][0]["url"] == url
        assert {t["name"] for t in table["servers"][0]["tools"]} == set(tools)
        assert "sha256" not in table["servers"][0]["tools"][0]


async def test_approving_an_unreachable_server_is_502_and_leaves_it_pending(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        await admin.post(
            "/v1/servers", json={"name": "gone", "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"}
        )
        before = (await admin.get("/v1/projection")).json()["desired_version"]
        r = await admin.post("/v1/servers/gone/approve", json={"comment": "reviewed"})
        assert r.status_code == 502 and r.json()["error"] == "upstream_unavailable"
        assert (await admin.get("/v1/servers/gone")).json()["status"] == "pending_approval"
        assert (await admin.get("/v1/projection")).json()["desired_version"] == before
        assert (await admin.post("/v1/servers/nope/approve", json={"comment": "reviewed"})).status_code == 404


async def test_a_good_policy_is_stored_pending_then_approval_compiles_a_projection(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config, opa=True) as (admin, opa, _):
        r = await admin.post("/v1/policies", json={"modules": _sample_policy(), "data": {"owner": "platform"}})
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["status"] == "pending_approval" and "modules" not in created
        version = created["version"]
        listed = (await admin.get("/v1/policies")).json()["items"]
        assert [p["version"] for p in listed] == [version] and "modules" not in listed[0]
        assert (await admin.get(f"/v1/policies/{version}")).json()["modules"] == _sample_policy()

        before = (await admin.get("/v1/projection")).json()["desired_version"]
        r = await admin.post(f"/v1/policies/{version}/approve", json={"comment": "reviewed"})
        assert r.status_code == 200
        assert r.json()["status"] == "active" and r.json()["projection_version"] == before + 1
        again = await admin.post(f"/v1/policies/{version}/approve", json={"comment": "reviewed"})
        assert again.json()["projection_version"] is None

        bundle = await opa.get("/v1/opa/bundles/gateway")
        files = read_bundle(bundle.content)
        assert {f"policy/{n}" for n in _sample_policy()} <= set(files)
        assert "reserved/gateway_runtime/main/main.rego" in files and "reserved/system/log/log.rego" in files
        assert not any(n.startswith("reserved/gateway/") for n in files)
        assert b'"owner":"platform"' in files["data.json"]
        assert bundle.headers["etag"] == f'"p{before + 1}"'

        r2 = await admin.post("/v1/policies", json={"modules": MINIMAL_POLICY})
        await admin.post(f"/v1/policies/{r2.json()['version']}/approve", json={"comment": "reviewed"})
        statuses = {p["version"]: p["status"] for p in (await admin.get("/v1/policies")).json()["items"]}
        assert statuses == {version: "superseded", r2.json()["version"]: "active"}
        assert (await admin.get("/v1/projection")).json()["desired_version"] == before + 2


@pytest.mark.parametrize(
    ("modules", "file", "line", "code"),
    [
        pytest.param(
            {"ok.rego": MINIMAL_POLICY["gateway.rego"], "bad/syntax.rego": "package gateway.x\n\nallow if {\n"},
            "bad/syntax.rego",
            4,
            "rego_parse_error",
            id="syntax-error",
        ),
        pytest.param(
            {"gateway.rego": 'package gateway\n\ndecision := {"allow": input.x == undefined_thing}\n'},
            "gateway.rego",
            3,
            "rego_unsafe_var_error",
            id="unsafe-var",
        ),
        pytest.param(
            {"gateway.rego": MINIMAL_POLICY["gateway.rego"], "other.rego": "package other\n\nx := 1\n"},
            "other.rego",
            1,
            "gateway_package_root",
            id="wrong-package",
        ),
        pytest.param(
            {"gateway.rego": "package gateway_runtime.main\n\ncall := 1\n"}, None, None, None, id="reserved-package"
        ),
        pytest.param(
            {"gateway.rego": "package gateway\n\nallow := true\n"},
            "",
            0,
            "gateway_decision_missing",
            id="no-decision-rule",
        ),
    ],
)
async def test_bad_policies_are_rejected_with_file_and_line(
    cp_config: Config, modules: dict, file: str | None, line: int | None, code: str | None
) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.post("/v1/policies", json={"modules": modules})
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["error"] == "policy_rejected"
        assert body["errors"]
        if file is not None:
            assert {"file": file, "line": line} == {k: body["errors"][0][k] for k in ("file", "line")}
            assert body["errors"][0]["code"] == code
        assert (await admin.get("/v1/policies")).json()["items"] == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"modules": {"../escape.rego": "package gateway"}}, id="dotdot"),
        pytest.param({"modules": {"/abs.rego": "package gateway"}}, id="absolute"),
        pytest.param({"modules": {"a.txt": "package gateway"}}, id="not-rego"),
        pytest.param({"modules": {}}, id="empty"),
        pytest.param({"modules": {"a.rego": "package gateway\n" + "#" * (1024 * 1024)}}, id="too-big"),
        pytest.param({"modules": {"a.rego": 1}}, id="not-a-string"),
        pytest.param({"modules": MINIMAL_POLICY, "data": [1]}, id="data-not-object"),
    ],
)
async def test_malformed_policy_uploads_are_400(cp_config: Config, body: dict) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.post("/v1/policies", json=body)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


async def test_policy_data_clashing_with_a_rule_is_rejected(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.post("/v1/policies", json={"modules": MINIMAL_POLICY, "data": {"decision": 1}})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "gateway_data_conflict"


async def test_unknown_policy_version_is_404_and_a_malformed_one_400(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        assert (await admin.get("/v1/policies/42")).json()["error"] == "not_found"
        assert (await admin.post("/v1/policies/42/approve", json={"comment": "reviewed"})).status_code == 404
        malformed = await admin.post("/v1/policies/abc/approve", json={"comment": "reviewed"})
        assert malformed.status_code == 400 and "version" in malformed.json()["message"]


async def test_errors_never_echo_request_data_and_carry_a_request_id(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.post("/v1/servers", content=b"{not json", headers={"X-Request-Id": "not-a-uuid"})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "bad_request" and "not json" not in body["message"]
    assert body["request_id"] == r.headers["x-request-id"]
    assert isinstance(httpx.Headers(r.headers).get("x-request-id"), str)
