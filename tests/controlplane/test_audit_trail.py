"""The reviewers' trail over HTTP against a real PostgreSQL: every filter of the decisions page,
the stats (checked against the same numbers computed in Python), the streamed export (NDJSON and
CSV, both trails) and the control-plane trail's filters."""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.db.audit_ingest import EVENT_FIELDS
from tests.controlplane.helpers import asgi_controlplane, make_config
from tests.support import pg

pytestmark = [pytest.mark.anyio, pytest.mark.db]

BASE = datetime(2026, 3, 1, 11, 40, tzinfo=UTC)
KINDS = ("denied", "rejected", "error", "tool_error", "ok")


def _event(i: int) -> dict[str, Any]:
    kind = KINDS[i % 5]
    return {
        "decision_id": f"t-{i:03}",
        "timestamp": (BASE + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
        "tenant": "tenant_local",
        "environment": "prod",
        "dataplane_id": "dp1" if i % 2 else "dp2",
        "subject": ("alice", "bob", "carol")[i % 3],
        "client_id": "agent-a" if i % 4 == 0 else "agent-b",
        "action": "tools/call",
        "server": "demo" if i % 2 else "files",
        "tool": ("echo", "delete", "read")[i % 3],
        "allowed": kind != "denied",
        "reasons": {
            "denied": ["Tool_Not_Granted", "role viewer lacks 100%"],
            "rejected": ["credential_not_connected"],
            "error": [],
        }.get(kind, ["granted"]),
        "policy_revision": "rev-a" if i < 30 else "rev-b",
        "projection_version": 1 + i // 10,
        "latency_ms": float(i),
        "status": kind,
        "error_category": {"denied": "policy_denied", "error": "upstream_timeout"}.get(kind),
        "arguments_sha256": "a" * 64,
        "result_sha256": None,
        "session_id": None,
        "protocol_version": "2025-06-18" if i % 7 == 0 else "2025-11-25",
    }


EVENTS = [_event(i) for i in range(40)]


@pytest.fixture(scope="module")
def module_database_url(pg_admin_url: str) -> Iterator[str]:
    with pg.throwaway_database(pg_admin_url) as url:
        yield url


@pytest.fixture(scope="module")
async def cp(module_database_url: str, opa_bin: Path) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """One control plane for the module (admin client, internal client), :data:`EVENTS` ingested."""
    async with asgi_controlplane(make_config(module_database_url, opa_bin)) as (admin, internal, _):
        assert (await internal.post("/v1/audit/events", json=EVENTS)).json() == {"accepted": 40}
        yield admin, internal


def _outcome(e: dict[str, Any]) -> str:
    if e["status"] in ("error", "rejected"):
        return str(e["status"])
    return "allowed" if e["allowed"] else "denied"


def _ids(pred: Callable[[dict[str, Any]], bool]) -> list[str]:
    return [e["decision_id"] for e in reversed(EVENTS) if pred(e)]


FILTERS: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
    ({"client_id": "agent-a"}, lambda e: e["client_id"] == "agent-a"),
    ({"status": "rejected"}, lambda e: e["status"] == "rejected"),
    ({"error_category": "upstream_timeout"}, lambda e: e["error_category"] == "upstream_timeout"),
    ({"policy_revision": "rev-b"}, lambda e: e["policy_revision"] == "rev-b"),
    ({"projection_version": "3"}, lambda e: e["projection_version"] == 3),
    ({"protocol_version": "2025-06-18"}, lambda e: e["protocol_version"] == "2025-06-18"),
    ({"dataplane_id": "dp2"}, lambda e: e["dataplane_id"] == "dp2"),
    ({"min_latency_ms": "30.5"}, lambda e: e["latency_ms"] > 30.5),
    ({"min_latency_ms": "30"}, lambda e: e["latency_ms"] > 30),
    ({"reason": "not_GRANTED"}, lambda e: any("not_granted" in r.lower() for r in e["reasons"])),
    # LIKE wildcards are literal: "%" is a character to find, "_" is not "any character"
    ({"reason": "100%"}, lambda e: any("100%" in r for r in e["reasons"])),
    ({"reason": "%"}, lambda e: any("%" in r for r in e["reasons"])),
    ({"reason": "credential_"}, lambda e: any("credential_" in r for r in e["reasons"])),
    ({"reason": "tool not"}, lambda e: False),  # one reason must hold the whole text
    ({"q": "GRANTED"}, lambda e: any("granted" in r.lower() for r in e["reasons"])),
    ({"q": "viewer tool"}, lambda e: e["status"] == "denied"),
    ({"q": "granted credential"}, lambda e: False),
    ({"outcome": "denied"}, lambda e: _outcome(e) == "denied"),
    ({"outcome": "allowed"}, lambda e: _outcome(e) == "allowed"),
    ({"outcome": "error"}, lambda e: _outcome(e) == "error"),
    ({"allowed": "false", "subject": "bob"}, lambda e: not e["allowed"] and e["subject"] == "bob"),
    ({"server": "demo", "tool": "echo"}, lambda e: e["server"] == "demo" and e["tool"] == "echo"),
    (
        {"since": "2026-03-01T12:00:00Z", "until": "2026-03-01T12:05:00Z", "dataplane_id": "dp1"},
        lambda e: "T12:00" <= e["timestamp"][10:16] < "T12:05" and e["dataplane_id"] == "dp1",
    ),
]


async def test_every_filter_selects_exactly_its_rows(cp: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    admin, _ = cp
    for params, pred in FILTERS:
        r = await admin.get("/v1/audit/decisions", params={"limit": 500, **params})
        assert r.status_code == 200, (params, r.text)
        assert [i["decision_id"] for i in r.json()["items"]] == _ids(pred), params
    # the same filters drive the export
    for params, pred in FILTERS[:6]:
        r = await admin.get("/v1/audit/export", params={"order": "desc", **params})
        assert [orjson.loads(line)["decision_id"] for line in r.content.splitlines()] == _ids(pred), params


async def test_oldest_first_pages_and_cursors_keep_their_order(cp: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    admin, _ = cp
    seen: list[str] = []
    params: dict[str, Any] = {"order": "asc", "limit": 7, "outcome": "allowed"}
    while True:
        page = (await admin.get("/v1/audit/decisions", params=params)).json()
        seen += [i["decision_id"] for i in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == list(reversed(_ids(lambda e: _outcome(e) == "allowed")))
    first = (await admin.get("/v1/audit/decisions", params={"limit": 2})).json()
    r = await admin.get("/v1/audit/decisions", params={"order": "asc", "cursor": first["next_cursor"]})
    assert r.status_code == 400 and "order" in r.json()["message"]


BAD_PARAMETERS = [
    ("/v1/audit/decisions", {"subjct": "alice"}, "subjct"),
    ("/v1/audit/decisions", {"projection_version": "x"}, "projection_version"),
    ("/v1/audit/decisions", {"projection_version": "-1"}, "projection_version"),
    ("/v1/audit/decisions", {"min_latency_ms": "fast"}, "min_latency_ms"),
    ("/v1/audit/decisions", {"min_latency_ms": "1e3"}, "min_latency_ms"),
    ("/v1/audit/decisions", {"reason": ""}, "reason"),
    ("/v1/audit/decisions", {"reason": "a\nb"}, "reason"),
    ("/v1/audit/decisions", {"q": "   "}, "q"),
    ("/v1/audit/decisions", {"q": "a b c d e f g h i"}, "q"),
    ("/v1/audit/decisions", {"outcome": "maybe"}, "outcome"),
    ("/v1/audit/decisions", {"order": "up"}, "order"),
    ("/v1/audit/decisions", {"status": "x" * 1025}, "status"),
    ("/v1/audit/decisions", {"client_id": "a\x00"}, "client_id"),
    ("/v1/audit/stats", {"top": "0"}, "top"),
    ("/v1/audit/stats", {"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "since"),
    ("/v1/audit/stats", {"since": "2025-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
    ("/v1/audit/stats", {"limit": "5"}, "limit"),
    ("/v1/audit/export", {"format": "xml"}, "format"),
    ("/v1/audit/export", {"trail": "all"}, "trail"),
    ("/v1/audit/export", {"trail": "control-plane", "subject": "alice"}, "subject"),
    ("/v1/audit/export", {"actor": "alice"}, "actor"),
    ("/v1/audit/export", {"cursor": "abc"}, "cursor"),
    ("/v1/audit/control-plane", {"status": "abc"}, "status"),
    ("/v1/audit/control-plane", {"allowed": "yes"}, "allowed"),
    ("/v1/audit/control-plane", {"cursor": "!!!"}, "cursor"),
    ("/v1/audit/control-plane", {"subject": "x"}, "subject"),
]


async def test_bad_parameters_are_400_naming_the_parameter(cp: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    admin, _ = cp
    for path, params, named in BAD_PARAMETERS:
        r = await admin.get(path, params=params)
        assert r.status_code == 400 and r.json()["error"] == "bad_request", (path, params, r.text)
        assert named in r.json()["message"], (path, params, r.text)


def _expected_stats(events: list[dict[str, Any]], top: int) -> dict[str, Any]:
    denied = [e for e in events if _outcome(e) == "denied"]
    tools = Counter((e["server"], e["tool"]) for e in denied)
    subjects = Counter(e["subject"] for e in denied)
    reasons = Counter(r for e in denied for r in e["reasons"])
    by_server: dict[str, list[float]] = {}
    for e in events:
        by_server.setdefault(e["server"], []).append(e["latency_ms"])

    def ranked(counter: Counter[Any]) -> list[tuple[Any, int]]:
        return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:top]

    def pct(values: list[float], p: float) -> float:  # percentile_cont: linear interpolation
        s = sorted(values)
        k = (len(s) - 1) * p
        lo = int(k)
        return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (k - lo)

    latency = sorted(by_server.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]
    return {
        "total": len(events),
        "outcomes": {o: sum(_outcome(e) == o for e in events) for o in ("allowed", "denied", "rejected", "error")},
        "top_denied_tools": [{"server": s, "tool": t, "count": n} for (s, t), n in ranked(tools)],
        "top_denied_subjects": [{"subject": s, "count": n} for s, n in ranked(subjects)],
        "denials_by_reason": [{"reason": r, "count": n} for r, n in ranked(reasons)],
        "latency_by_server": [
            {"server": s, "count": len(v), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99)} for s, v in latency
        ],
    }


async def test_stats_are_the_numbers_python_computes(cp: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    admin, _ = cp
    r = await admin.get(
        "/v1/audit/stats", params={"since": "2026-03-01T11:00:00Z", "until": "2026-03-01T14:00:00Z", "top": 2}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in _expected_stats(EVENTS, 2)} == _expected_stats(EVENTS, 2)
    assert [h["hour"] for h in body["per_hour"]] == [
        "2026-03-01T11:00:00+00:00",
        "2026-03-01T12:00:00+00:00",
        "2026-03-01T13:00:00+00:00",
    ]
    first_hour = Counter(_outcome(e) for e in EVENTS[:20])
    assert body["per_hour"][0] == {"hour": "2026-03-01T11:00:00+00:00", **{o: first_hour[o] for o in body["outcomes"]}}
    assert body["per_hour"][2] == {
        "hour": "2026-03-01T13:00:00+00:00",
        "allowed": 0,
        "denied": 0,
        "rejected": 0,
        "error": 0,
    }
    assert statistics.median(e["latency_ms"] for e in EVENTS if e["server"] == "demo") == next(
        s["p50_ms"] for s in _expected_stats(EVENTS, 10)["latency_by_server"] if s["server"] == "demo"
    )

    # filters narrow every aggregate; the range bounds them too
    filtered = (
        await admin.get(
            "/v1/audit/stats",
            params={"since": "2026-03-01T11:00:00Z", "until": "2026-03-01T12:00:00Z", "subject": "bob"},
        )
    ).json()
    subset = [e for e in EVENTS[:20] if e["subject"] == "bob"]
    assert {k: filtered[k] for k in _expected_stats(subset, 10)} == _expected_stats(subset, 10)
    # the default range is the last 24 hours: nothing of March 2026 is in it
    recent = (await admin.get("/v1/audit/stats")).json()
    assert recent["total"] == 0 and len(recent["per_hour"]) in (24, 25)


async def test_export_streams_ndjson_and_csv_of_every_field(cp: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    admin, _ = cp
    r = await admin.get("/v1/audit/export")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    assert r.headers["content-disposition"].startswith('attachment; filename="audit-decisions-')
    assert r.headers["content-disposition"].endswith('.ndjson"')
    rows = [orjson.loads(line) for line in r.content.splitlines()]
    assert len(rows) == 40 and r.content.endswith(b"\n")
    for row, event in zip(rows, EVENTS, strict=True):  # oldest first by default
        assert set(row) == set(EVENT_FIELDS)
        expected = {**event, "timestamp": event["timestamp"].replace("Z", "+00:00")}
        assert row == expected

    r = await admin.get("/v1/audit/export", params={"format": "csv", "order": "desc", "status": "denied"})
    assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"].endswith('.csv"')
    table = list(csv.reader(io.StringIO(r.content.decode())))
    assert table[0] == list(EVENT_FIELDS)
    denied = [e for e in reversed(EVENTS) if e["status"] == "denied"]
    assert [row[0] for row in table[1:]] == [e["decision_id"] for e in denied]
    record = dict(zip(table[0], table[1], strict=True))
    assert orjson.loads(record["reasons"]) == denied[0]["reasons"]
    assert record["allowed"] == "false" and record["result_sha256"] == "" and record["latency_ms"] == "35.0"

    empty = await admin.get("/v1/audit/export", params={"format": "csv", "subject": "nobody"})
    assert empty.status_code == 200 and empty.content.decode().strip() == ",".join(EVENT_FIELDS)
    assert (await admin.get("/v1/audit/export", params={"subject": "nobody"})).content == b""


async def test_control_plane_trail_is_filtered_paginated_and_exported(
    cp: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    admin, _ = cp
    start = datetime.now(UTC).isoformat()  # other tests of the module were recorded before
    grant = await admin.post(
        "/v1/admin/roles", json={"subject": "rita", "issuer": "https://idp", "role": "auditor", "comment": "SOC 2"}
    )
    assert grant.status_code == 201, grant.text
    assert (await admin.delete(f"/v1/admin/roles/{grant.json()['id']}")).status_code == 200
    for _ in range(3):
        await admin.get("/v1/admin/whoami")
    assert (await admin.post("/v1/admin/roles", json={"subject": "x"})).status_code == 400
    cutoff = datetime.now(UTC).isoformat()  # the queries below are recorded too

    async def rows(**params: Any) -> list[dict[str, Any]]:
        r = await admin.get("/v1/audit/control-plane", params={"since": start, **params})
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    changes = await rows(resource_kind="role_grant")
    assert [c["action"] for c in changes] == ["roles.write", "roles.write"]
    assert changes[1]["comment"] == "SOC 2" and changes[1]["after_sha256"] and not changes[1]["before_sha256"]
    assert changes[0]["before_sha256"] == changes[1]["after_sha256"]
    assert await rows(resource_id=grant.json()["id"], resource_kind="role_grant") == changes
    assert [r["status"] for r in await rows(status="400")] == [400]
    assert len(await rows(action="scope.read")) == 3
    assert {r["method"] for r in await rows(changes="true")} == {"POST", "DELETE"}

    # keyset pages, both orders, visit every row once
    everything = await rows(limit=1000, until=cutoff)
    assert len(everything) == 6
    for order in ("desc", "asc"):
        seen: list[int] = []
        params: dict[str, Any] = {"limit": 2, "order": order, "since": start, "until": cutoff}
        while True:
            page = (await admin.get("/v1/audit/control-plane", params=params)).json()
            seen += [r["id"] for r in page["items"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        ids = [r["id"] for r in everything]
        assert seen == (ids if order == "desc" else ids[::-1])

    r = await admin.get(
        "/v1/audit/export", params={"trail": "control-plane", "format": "csv", "changes": "true", "since": start}
    )
    assert r.status_code == 200 and "audit-control-plane-" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.content.decode())))
    assert [int(t["id"]) for t in table] == [c["id"] for c in reversed(changes)]
    assert table[0]["comment"] == "SOC 2" and orjson.loads(table[0]["roles"]) == changes[1]["roles"]
    nd = await admin.get(
        "/v1/audit/export",
        params={"trail": "control-plane", "actor": changes[0]["actor"], "since": start, "until": cutoff},
    )
    assert [orjson.loads(line) for line in nd.content.splitlines()] == everything[::-1]
