"""Runtime audit ingest (internal) and the decision query API (admin)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.config import Config
from tests.controlplane.helpers import asgi_controlplane

pytestmark = [pytest.mark.anyio, pytest.mark.db]

BASE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _event(i: int, **kw: Any) -> dict[str, Any]:
    event = {
        "decision_id": f"dec-{i:04}",
        "timestamp": (BASE + timedelta(seconds=i // 2)).isoformat().replace("+00:00", "Z"),
        "tenant": "tenant_local",
        "environment": "prod",
        "dataplane_id": "dp1",
        "subject": "alice" if i % 3 else "bob",
        "client_id": "cli",
        "action": "tools/call",
        "server": "demo",
        "tool": "echo" if i % 2 else "delete_record",
        "allowed": bool(i % 2),
        "reasons": ["granted"] if i % 2 else ["tool_not_granted"],
        "policy_revision": "p2-pv1",
        "projection_version": 2,
        "latency_ms": 1.25,
        "status": "ok",
        "error_category": None,
        "arguments_sha256": "a" * 64,
        "result_sha256": None,
        "session_id": None,
        "protocol_version": "2025-11-25",
    }
    event.update(kw)
    return event


async def test_ingest_is_idempotent_and_never_stores_unknown_fields(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, internal, state):
        events = [_event(i) for i in range(5)] + [_event(0, arguments={"text": "raw secret"})]
        r = await internal.post("/v1/audit/events", json=events)
        assert r.status_code == 202 and r.json() == {"accepted": 6}
        assert (await internal.post("/v1/audit/events", json=events)).status_code == 202
        assert await state["cp_pool"].fetchval("select count(*) from audit_decisions") == 5
        item = (await admin.get("/v1/audit/decisions/dec-0001")).json()
        assert item["tool"] == "echo" and item["allowed"] is True and item["opa_logged"] is False
        assert item["opa_decision_log"] is None and "arguments" not in item
        assert set(item) - {"opa_decision_log"} == {
            "decision_id",
            "timestamp",
            "tenant",
            "environment",
            "subject",
            "client_id",
            "action",
            "server",
            "tool",
            "allowed",
            "reasons",
            "policy_revision",
            "projection_version",
            "latency_ms",
            "status",
            "error_category",
            "arguments_sha256",
            "result_sha256",
            "session_id",
            "protocol_version",
            "dataplane_id",
            "opa_logged",
        }
        assert (await admin.get("/v1/audit/decisions/nope")).status_code == 404


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"allowed": "yes"}, id="allowed-not-bool"),
        pytest.param({"timestamp": "yesterday"}, id="timestamp"),
        pytest.param({"timestamp": "2026-03-01T12:00:00"}, id="timestamp-without-zone"),
        pytest.param({"decision_id": None}, id="no-decision-id"),
        pytest.param({"tenant": "other"}, id="other-tenant"),
        pytest.param({"reasons": "x"}, id="reasons-not-list"),
        pytest.param({"projection_version": "2"}, id="version-not-int"),
        pytest.param({"latency_ms": True}, id="latency-bool"),
        pytest.param({"tool": 7}, id="tool-not-string"),
    ],
)
async def test_ingest_rejects_badly_typed_events_atomically(cp_config: Config, bad: dict[str, Any]) -> None:
    async with asgi_controlplane(cp_config) as (_, internal, state):
        r = await internal.post("/v1/audit/events", json=[_event(1), _event(2, **bad)])
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        assert await state["cp_pool"].fetchval("select count(*) from audit_decisions") == 0
        assert (await internal.post("/v1/audit/events", json={"not": "a list"})).status_code == 400


async def test_query_filters_and_keyset_pagination(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, internal, _):
        await internal.post("/v1/audit/events", json=[_event(i) for i in range(23)])

        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
            page = (await admin.get("/v1/audit/decisions", params=params)).json()
            seen += [i["decision_id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"dec-{i:04}" for i in reversed(range(23))]

        async def ids(**params: Any) -> set[str]:
            r = await admin.get("/v1/audit/decisions", params={"limit": 500, **params})
            assert r.status_code == 200, r.text
            return {i["decision_id"] for i in r.json()["items"]}

        assert await ids(allowed="false") == {f"dec-{i:04}" for i in range(0, 23, 2)}
        assert await ids(subject="bob", tool="delete_record") == {f"dec-{i:04}" for i in range(0, 23, 6)}
        assert await ids(server="other") == set()
        assert await ids(action="tools/call") == {f"dec-{i:04}" for i in range(23)}
        window = await ids(since="2026-03-01T12:00:02Z", until="2026-03-01T12:00:04+00:00")
        assert window == {f"dec-{i:04}" for i in (4, 5, 6, 7)}


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": 0}, id="limit-zero"),
        pytest.param({"limit": 501}, id="limit-too-big"),
        pytest.param({"allowed": "maybe"}, id="allowed"),
        pytest.param({"since": "last week"}, id="since"),
        pytest.param({"cursor": "!!!"}, id="cursor"),
    ],
)
async def test_bad_query_parameters_are_400(cp_config: Config, params: dict[str, Any]) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.get("/v1/audit/decisions", params=params)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
