"""Unit tests of the metrics: label bounds, per-app registries, ``GET /metrics`` access, scrape-time state.

The request path runs through the real data-plane app (``create_dataplane_app``) with the
doubles of ``tests/dataplane/test_endpoint.py`` (real JWT verification, governor, schema
validation; a scripted decision engine and upstream).
"""

from __future__ import annotations

import types
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Secret
from gateway.devtools.idp import DevIdentityProvider
from gateway.observability.asgi import MetricsEndpoint
from gateway.observability.context import RequestRecord
from gateway.observability.metrics import ControlPlaneMetrics, DataPlaneMetrics, spool_bytes
from tests.dataplane.test_endpoint import BASE, ISSUER, Gateway

pytestmark = pytest.mark.anyio

CANARY_SUBJECT = "canary-subject-5f1e"
CANARY_ARGUMENT = "canary-argument-a93c"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def _projection() -> Any:
    tools = {"echo": object(), "get_weather": object()}
    server = types.SimpleNamespace(tools=tools, transport="streamable-http")
    return types.SimpleNamespace(servers={"demo": server}, version=7, revision="p7-pv2")


def _metrics(projection: Any = None) -> DataPlaneMetrics:
    current = projection or _projection()
    return DataPlaneMetrics(projection=lambda: current, protocol_versions=("2026-07-28", "2025-11-25"))


def _scope(method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": "/mcp", "headers": headers or [], **extra}


def _render(metrics: DataPlaneMetrics | ControlPlaneMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


# --------------------------------------------------------------------------- label bounds
def test_request_labels_are_bounded_to_what_the_gateway_and_projection_know() -> None:
    metrics = _metrics()
    record = RequestRecord()
    record.action, record.server, record.tool, record.outcome = "tools/call", "demo", "echo", "allowed"
    record.protocol = "2026-07-28"
    metrics.observe_request(_scope(), record, 200, 0.004)
    odd = RequestRecord()
    odd.action, odd.server, odd.tool, odd.protocol = (
        f"x/{CANARY_ARGUMENT}",
        CANARY_SUBJECT,
        CANARY_ARGUMENT,
        "1999-01-01",
    )
    metrics.observe_request(_scope(), odd, 200, 0.001)
    probe = RequestRecord()
    probe.action, probe.server, probe.tool = "tools/call", "demo", CANARY_ARGUMENT
    metrics.observe_request(_scope(), probe, 200, 0.001)
    note = RequestRecord()
    note.action = "notifications/initialized"
    metrics.observe_request(_scope(headers=[(b"mcp-protocol-version", b"2025-11-25")]), note, 202, 0.001)
    metrics.observe_request(_scope("DELETE"), RequestRecord(), 404, 0.001)

    text = _render(metrics)
    labels = {"action": "tools/call", "server": "demo", "outcome": "allowed", "protocol": "2026-07-28"}
    assert value(text, "gateway_dp_requests_total", **labels) == 1
    assert value(text, "gateway_dp_request_duration_seconds_count", **labels) == 1
    assert (
        value(
            text, "gateway_dp_requests_total", action="other", server="unknown", outcome="allowed", protocol="unknown"
        )
        == 1
    )
    notification = {"action": "notification", "server": "none", "outcome": "allowed", "protocol": "2025-11-25"}
    assert value(text, "gateway_dp_requests_total", **notification) == 1
    deleted = {"action": "session_delete", "server": "none", "outcome": "rejected", "protocol": "none"}
    assert value(text, "gateway_dp_requests_total", **deleted) == 1
    assert value(text, "gateway_dp_tool_calls_total", server="demo", tool="echo", outcome="allowed") == 1
    assert value(text, "gateway_dp_tool_calls_total", server="demo", tool="unknown", outcome="allowed") == 1
    assert CANARY_SUBJECT not in text and CANARY_ARGUMENT not in text


def test_each_app_has_its_own_registry() -> None:
    first, second = _metrics(), _metrics()
    first.jwks_fetched("ok")

    assert value(_render(first), "gateway_jwks_fetches_total", outcome="ok") == 1
    assert value(_render(second), "gateway_jwks_fetches_total", outcome="ok") == 0


def test_opa_availability_follows_the_bundle_and_the_last_answer() -> None:
    metrics = _metrics()
    ready = [False]
    metrics.watch(opa_ready=lambda: ready[0])
    assert value(_render(metrics), "gateway_opa_available") == 0
    ready[0] = True
    metrics.observe_decision("call", 0.0005)
    assert value(_render(metrics), "gateway_opa_available") == 1
    metrics.observe_decision("call", 2.0, outcome="unavailable")
    text = _render(metrics)
    assert value(text, "gateway_opa_available") == 0
    assert value(text, "gateway_opa_errors_total", engine="sidecar", kind="unavailable") == 1
    assert value(text, "gateway_opa_decision_duration_seconds_count", query="call", engine="sidecar") == 2


def test_state_is_read_when_scraped(tmp_path: Path) -> None:
    spool = tmp_path / "dp.jsonl"
    spool.write_bytes(b"x" * 123)
    audit = types.SimpleNamespace(queued=4, spooled=10, replayed=6, shipped=99, rejected=0)
    metrics = _metrics()
    sessions = {"a": 1, "b": 2}
    metrics.watch(sessions=lambda: len(sessions), audit=audit, spool_files=lambda: (spool, tmp_path / "absent"))

    text = _render(metrics)

    assert value(text, "gateway_dp_sessions_open") == 2
    assert value(text, "gateway_dp_audit_queue_depth") == 4
    assert value(text, "gateway_dp_audit_spool_bytes") == 123
    assert value(text, "gateway_dp_audit_spooled_events_total") == 10
    assert value(text, "gateway_dp_audit_replayed_events_total") == 6
    assert value(text, "gateway_dp_projection_version") == 7
    assert value(text, "gateway_dp_projection_info", version="7", revision="p7-pv2") == 1


def test_spool_bytes_counts_the_files_there_are(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    assert spool_bytes([tmp_path / "f", tmp_path / "missing"]) == 5


def test_control_plane_serves_ingest_and_pool() -> None:
    pool = types.SimpleNamespace(get_size=lambda: 5, get_idle_size=lambda: 2, get_max_size=lambda: 10)
    metrics = ControlPlaneMetrics(pool)
    bundle = types.SimpleNamespace(path="/v1/opa/bundles/{name:path}")
    feed = types.SimpleNamespace(path="/v1/dataplane/projection")
    for status in (200, 304, 304, 503):
        metrics.observe_request(_scope("GET", route=bundle), RequestRecord(), status, 0.01)
    metrics.observe_request(_scope("GET", route=feed), RequestRecord(), 304, 30.0)
    metrics.observe_request(_scope("GET", path="/v1/oauth/connect/SECRET-HANDLE"), RequestRecord(), 404, 0.01)
    now = datetime.now(UTC)
    metrics.observe_ingest("audit", [now - timedelta(seconds=2), now - timedelta(seconds=400), None])

    text = _render(metrics)

    assert value(text, "gateway_cp_bundle_serves_total", outcome="200") == 1
    assert value(text, "gateway_cp_bundle_serves_total", outcome="304") == 2
    assert value(text, "gateway_cp_bundle_serves_total", outcome="error") == 1
    assert value(text, "gateway_cp_projection_serves_total", outcome="304") == 1
    assert value(text, "gateway_cp_requests_total", route="unmatched", method="GET", code="404") == 1
    assert "SECRET-HANDLE" not in text
    assert value(text, "gateway_cp_ingest_events_total", stream="audit") == 3
    assert value(text, "gateway_cp_ingest_lag_seconds_count", stream="audit") == 2
    assert value(text, "gateway_cp_ingest_lag_seconds_bucket", stream="audit", le="5.0") == 1
    assert value(text, "gateway_cp_db_pool_connections", state="in_use") == 3
    assert value(text, "gateway_cp_db_pool_max") == 10


# --------------------------------------------------------------------------- GET /metrics access
async def _get(app: Any, headers: dict[str, str], method: str = "GET", peer: str = "127.0.0.1") -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8081") as http:
        return await http.request(method, "/metrics", headers=headers)


def _endpoint_app(endpoint: MetricsEndpoint, metrics: Any) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["state"] = {"dp_metrics": metrics}
        await endpoint(scope, receive, send)

    return app


async def test_metrics_endpoint_with_a_token_needs_it_and_skips_the_host_check() -> None:
    endpoint = MetricsEndpoint("dp_metrics", token=Secret("scrape-token"), allowed_hosts=["gw.example:443"])
    app = _endpoint_app(endpoint, _metrics())

    assert (await _get(app, {"host": "10.1.2.3:8081"})).status_code == 401
    assert (await _get(app, {"host": "10.1.2.3:8081", "authorization": "Bearer wrong"})).status_code == 401
    ok = await _get(app, {"host": "10.1.2.3:8081", "authorization": "Bearer scrape-token"})
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("text/plain; version=")
    assert "gateway_dp_projection_version 7.0" in ok.text
    assert (await _get(app, {"authorization": "Bearer scrape-token"}, "POST")).status_code == 405


async def test_metrics_endpoint_without_a_token_keeps_the_host_check() -> None:
    endpoint = MetricsEndpoint("dp_metrics", token=Secret(""), allowed_hosts=["127.0.0.1:8081"])
    app = _endpoint_app(endpoint, _metrics())

    assert (await _get(app, {"host": "evil.example"})).status_code == 421
    assert (await _get(app, {"host": "127.0.0.1:8081"})).status_code == 200


async def test_metrics_endpoint_without_a_token_answers_loopback_peers_only() -> None:
    """What it names (servers, tools, the bundle revision) is not for the network unless the
    operator set a scrape token."""
    endpoint = MetricsEndpoint("dp_metrics", token=Secret(""), allowed_hosts=["127.0.0.1:8081", "gw.example"])
    app = _endpoint_app(endpoint, _metrics())

    for peer in ("10.1.2.3", "192.168.0.9", "2001:db8::1", "0.0.0.0"):
        refused = await _get(app, {"host": "gw.example"}, peer=peer)
        assert refused.status_code == 403 and "GATEWAY_METRICS_TOKEN" in refused.text, peer
    assert (await _get(app, {"host": "gw.example"}, peer="::1")).status_code == 200
    with_token = MetricsEndpoint("dp_metrics", token=Secret("t"), allowed_hosts=None)
    remote = await _get(_endpoint_app(with_token, _metrics()), {"authorization": "Bearer t"}, peer="10.1.2.3")
    assert remote.status_code == 200


# --------------------------------------------------------------------------- through the data-plane app
@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> DevIdentityProvider:
    return DevIdentityProvider.create(tmp_path_factory.mktemp("idp"), ISSUER)


@pytest.fixture
async def observed(idp: DevIdentityProvider, tmp_path: Path) -> AsyncIterator[tuple[Gateway, DataPlaneMetrics]]:
    async with httpx.AsyncClient() as cp_http:
        gateway = Gateway(idp, tmp_path, cp_http)
        metrics = DataPlaneMetrics(
            projection=lambda: gateway.state["dp_sync"].current,  # type: ignore[attr-defined]
            protocol_versions=("2026-07-28", "2025-11-25"),
        )
        gateway.state["dp_metrics"] = metrics
        yield gateway, metrics


def _call(name: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": meta},
    }
    headers = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": name}
    return body, headers


async def test_requests_through_the_data_plane_are_counted_by_outcome(
    observed: tuple[Gateway, DataPlaneMetrics],
) -> None:
    gateway, _ = observed
    auth = {"authorization": f"Bearer {gateway.token(sub=CANARY_SUBJECT)}"}
    async with gateway.client() as http:
        body, headers = _call("demo__echo", {"text": CANARY_ARGUMENT})
        assert (await http.post("/mcp", json=body, headers={**auth, **headers})).status_code == 200
        body, headers = _call("demo__nope", {"text": CANARY_ARGUMENT})
        assert (await http.post("/mcp", json=body, headers={**auth, **headers})).status_code == 200
        assert (await http.post("/mcp", json=body, headers=headers)).status_code == 401
        scraped = await http.get("/metrics")

    assert scraped.status_code == 200
    text = scraped.text
    allowed = {"action": "tools/call", "server": "demo", "outcome": "allowed", "protocol": "2026-07-28"}
    assert value(text, "gateway_dp_requests_total", **allowed) == 1
    rejected = {"action": "tools/call", "server": "none", "outcome": "rejected", "protocol": "2026-07-28"}
    assert value(text, "gateway_dp_requests_total", **rejected) == 1
    unauthenticated = {"action": "none", "server": "none", "outcome": "rejected", "protocol": "2026-07-28"}
    assert value(text, "gateway_dp_requests_total", **unauthenticated) == 1
    assert value(text, "gateway_dp_tool_calls_total", server="demo", tool="echo", outcome="allowed") == 1
    assert CANARY_SUBJECT not in text and CANARY_ARGUMENT not in text
    assert BASE  # the harness's public URL (the Host the guard allows)
