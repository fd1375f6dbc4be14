"""The per-aggregate modules against a real PostgreSQL: servers, policies, audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from gateway.db import audit, audit_ingest, instances, policies, servers
from gateway.db.audit_partitions import PartitionMap
from gateway.db.servers import PinnedTool
from gateway.errors import ConflictError, NotFound

pytestmark = [pytest.mark.anyio, pytest.mark.db]

T, E = "tenant_local", "prod"


async def test_duplicate_server_maps_to_conflict_and_missing_to_not_found(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await servers.create_server(
            conn, T, E, name="a", transport="streamable_http", url="http://x/mcp", description=""
        )
        with pytest.raises(ConflictError) as info:
            await servers.create_server(
                conn, T, E, name="a", transport="streamable_http", url="http://y", description=""
            )
        assert "http://y" not in str(info.value)
        with pytest.raises(NotFound):
            await servers.get_server(conn, T, E, "b")
        # another scope is another namespace
        await servers.create_server(
            conn, T, "dev", name="a", transport="streamable_http", url="http://x", description=""
        )


async def test_approving_a_server_pins_tools_in_order_and_replaces_old_pins(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await servers.create_server(conn, T, E, name="a", transport="streamable_http", url="http://x", description="d")
        tools = [PinnedTool({"name": n, "inputSchema": {"type": "object"}}, n * 8) for n in ("zz", "aa")]
        rec = await servers.approve_server(conn, T, E, "a", tools)
        assert rec["status"] == "approved" and rec["approved_at"]
        got = await servers.get_server(conn, T, E, "a")
        assert [t["name"] for t in got["tools"]] == ["zz", "aa"]
        await servers.approve_server(conn, T, E, "a", tools[:1])
        assert [t["name"] for t in (await servers.get_server(conn, T, E, "a"))["tools"]] == ["zz"]
        approved = await servers.approved_servers_with_tools(conn, T, E)
        assert approved == [
            {
                "name": "a",
                "transport": "streamable_http",
                "url": "http://x",
                "description": "d",
                "tools": [{"name": "zz", "inputSchema": {"type": "object"}}],
                "prompts": [],
                "capabilities": {},
                "requires_credential": False,
            }
        ]


async def test_activating_a_policy_supersedes_the_previous_one(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        v1 = await policies.create_policy(conn, T, E, modules={"a.rego": "package gateway"}, data=None, sha256="1")
        v2 = await policies.create_policy(conn, T, E, modules={"b.rego": "package gateway"}, data={"k": 1}, sha256="2")
        await policies.activate_policy(conn, T, E, v1["version"])
        await policies.activate_policy(conn, T, E, v2["version"])
        listed = {p["version"]: p["status"] for p in await policies.list_policies(conn, T, E)}
        assert listed == {v1["version"]: "superseded", v2["version"]: "active"}
        active = await policies.active_policy(conn, T, E)
        assert active is not None and active["data"] == {"k": 1}
        with pytest.raises(NotFound):
            await policies.activate_policy(conn, T, E, 9999)


def _event(i: int, ts: datetime, **kw: object) -> tuple:
    values = {f: None for f in audit_ingest.EVENT_FIELDS}
    values.update(
        decision_id=f"d{i:03}", timestamp=ts, tenant=T, environment=E, allowed=i % 2 == 0, reasons=[], subject="alice"
    )
    values.update(kw)
    return tuple(values[f] for f in audit_ingest.EVENT_FIELDS)


async def test_audit_events_are_idempotent_and_join_opa_logs(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    parts = PartitionMap()
    await audit_ingest.insert_decision_events(pool, parts, T, E, [_event(1, now), _event(1, now), _event(2, now)])
    await audit_ingest.insert_decision_events(pool, parts, T, E, [_event(1, now)])  # a replayed batch
    assert await pool.fetchval("select count(*) from audit_decisions") == 2
    log = {
        "decision_id": "d001",
        "opa_id": "o",
        "path": "gateway_runtime/main/call",
        "revision": "p1-pv0",
        "timestamp": now,
        "input": {"tool": "echo"},
        "result": {"allow": True},
        "erased": ["/input/arguments"],
        "masked": None,
    }
    await audit_ingest.insert_opa_logs(pool, parts, T, E, [log, log])
    item = await audit.get_decision(pool, T, E, "d001")
    assert item is not None and item["opa_logged"] is True
    assert item["opa_decision_log"]["erased"] == ["/input/arguments"]
    other = await audit.get_decision(pool, T, E, "d002")
    assert other is not None and other["opa_logged"] is False and other["opa_decision_log"] is None


async def test_audit_keyset_pagination_visits_every_row_once(pool: asyncpg.Pool) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    # pairs share a timestamp, so the decision_id tiebreak matters
    await audit_ingest.insert_decision_events(
        pool, PartitionMap(), T, E, [_event(i, base + timedelta(seconds=i // 2)) for i in range(11)]
    )
    seen: list[str] = []
    after = None
    while True:
        page = await audit.query_decisions(pool, T, E, audit.DecisionQuery(limit=3, after=after))
        if not page:
            break
        seen += [p["decision_id"] for p in page]
        last = page[-1]
        after = (datetime.fromisoformat(last["timestamp"]), last["decision_id"])
    assert seen == [f"d{i:03}" for i in reversed(range(11))]
    only_allowed = await audit.query_decisions(pool, T, E, audit.DecisionQuery(allowed=True, limit=50))
    assert {p["decision_id"] for p in only_allowed} == {f"d{i:03}" for i in range(0, 11, 2)}


async def test_instances_report_liveness(pool: asyncpg.Pool) -> None:
    await instances.record_data_plane(pool, T, E, dataplane_id="dp1", active_version=3, state="ok", error_category=None)
    await pool.execute("update data_planes set last_seen = now() - interval '91 seconds'")
    await instances.record_data_plane(pool, T, E, dataplane_id="dp2", active_version=4, state="ok", error_category=None)
    rows = {r["id"]: r["live"] for r in await instances.list_data_planes(pool, T, E)}
    assert rows == {"dp1": False, "dp2": True}


async def test_instances_unseen_for_a_day_are_forgotten_when_a_data_plane_reports(pool: asyncpg.Pool) -> None:
    """Pods replaced by rollouts and autoscaling must not pile up in the rollout view."""
    for dp in ("gone", "recent"):
        await instances.record_data_plane(
            pool, T, E, dataplane_id=dp, active_version=3, state="ok", error_category=None
        )
        await instances.register_opa_instance(pool, T, E, opa_id=f"{dp}/opa", dataplane_id=dp)
    await pool.execute("UPDATE data_planes SET last_seen = now() - interval '25 hours' WHERE id = 'gone'")
    await pool.execute("UPDATE opa_instances SET last_seen = now() - interval '25 hours' WHERE id = 'gone/opa'")
    await pool.execute("UPDATE data_planes SET last_seen = now() - interval '23 hours' WHERE id = 'recent'")
    await pool.execute("UPDATE opa_instances SET last_seen = now() - interval '23 hours' WHERE id = 'recent/opa'")

    await instances.record_data_plane(pool, T, E, dataplane_id="new", active_version=4, state="ok", error_category=None)

    assert {r["id"] for r in await instances.list_data_planes(pool, T, E)} == {"recent", "new"}
    assert {r["id"] for r in await instances.list_opa_instances(pool, T, E)} == {"recent/opa"}
