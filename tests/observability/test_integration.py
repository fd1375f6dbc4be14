"""One governed call through a real stack with tracing and JSON logs on (issue 11, observability).

Real processes: ``gateway serve`` (both planes, OPA sidecar), the sample upstream, PostgreSQL.
In this test process, on loopback threads: an OTLP/HTTP receiver (``POST /v1/traces``,
protobuf decoded with ``opentelemetry-proto``), and two recording reverse proxies, one in
front of the upstream (the server ``traced`` is registered at its URL) and one in front of
the OPA sidecar (``GATEWAY_OPA_URL``), which keep every request's ``traceparent``.

One ``tools/call`` with a client ``traceparent`` must yield: a SERVER span continuing the
client's trace with children ``gateway.auth``, ``gateway.validation``, ``gateway.decision``
(its decision id and bundle revision those of the audit record) and ``gateway.upstream``;
the upstream's request carrying a ``traceparent`` of the same trace whose parent is the
upstream span, OPA's whose parent is the decision span; exactly one JSON access line with
the audit's decision id and the trace id; no span attribute and no log line carrying the
token, the subject or the argument; and both planes' ``/metrics`` counting what happened.
"""

from __future__ import annotations

import gzip
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.devtools.stack import LocalStack, sample_policy_modules
from tests.support import pg
from tests.support.ports import free_port

pytestmark = [pytest.mark.db, pytest.mark.integration]

CANARY_ARGUMENT = "canary-argument-6c0d2e"
CANARY_SUBJECT = "canary-subject-91ab"
MODERN = "2026-07-28"
_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


class ThreadServer:
    """A Starlette app served by uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, app: Starlette) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


class OtlpReceiver:
    """``POST /v1/traces``: keeps every exported span (protobuf ``ExportTraceServiceRequest``)."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/traces", self._traces, methods=["POST"])])

    async def _traces(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        with self._lock:
            for resource_spans in export.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        return Response(reply, media_type="application/x-protobuf")

    def of_trace(self, trace_id: str) -> list[Any]:
        with self._lock:
            return [s for s in self.spans if s.trace_id.hex() == trace_id]


class RecordingProxy:
    """Forwards every request to ``target`` (streamed both ways) and keeps its path and ``traceparent``."""

    def __init__(self) -> None:
        self.target = ""
        self.seen: list[tuple[str, str | None]] = []
        self._client: httpx.AsyncClient | None = None
        methods = ["GET", "POST", "DELETE", "PUT"]
        self.app = Starlette(routes=[Route("/{path:path}", self._forward, methods=methods)])

    async def _forward(self, request: Request) -> Response:
        self.seen.append((request.url.path, request.headers.get("traceparent")))
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=30)
        headers = {k: v for k, v in request.headers.items() if k not in _HOP}
        url = self.target + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        upstream = await self._client.send(
            self._client.build_request(request.method, url, content=await request.body(), headers=headers), stream=True
        )
        out = {k: v for k, v in upstream.headers.items() if k not in _HOP}
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            headers=out,
            background=BackgroundTask(upstream.aclose),
        )


class Observed:
    def __init__(
        self, stack: LocalStack, receiver: OtlpReceiver, upstream: RecordingProxy, opa: RecordingProxy
    ) -> None:
        self.stack, self.receiver, self.upstream, self.opa = stack, receiver, upstream, opa


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[Observed]:
    receiver, upstream_proxy, opa_proxy = OtlpReceiver(), RecordingProxy(), RecordingProxy()
    with (
        ThreadServer(receiver.app) as otlp,
        ThreadServer(upstream_proxy.app) as up,
        ThreadServer(opa_proxy.app) as opa,
        pg.throwaway_database(pg_admin_url) as database_url,
        LocalStack.create(tmp_path_factory.mktemp("observed"), database_url=database_url, opa_bin=str(opa_bin)) as s,
    ):
        upstream_proxy.target = f"http://127.0.0.1:{s.upstream_port}"
        opa_proxy.target = f"http://127.0.0.1:{s.opa_port}"
        s.extra_env.update(
            {
                "GATEWAY_OTLP_ENDPOINT": otlp.url,
                "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export promptly (the test polls)
                "GATEWAY_LOG_FORMAT": "json",
                "GATEWAY_OPA_URL": opa.url,
            }
        )
        s.start_upstream()
        s.start_gateway()
        s.register_and_approve_server("traced", f"{up.url}/mcp", "the sample upstream behind a recording proxy")
        s.upload_and_approve_policy(sample_policy_modules())
        s.wait_projection_active()
        yield Observed(s, receiver, upstream_proxy, opa_proxy)


def _poll(check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def _attributes(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
    return out


def _access_lines(stack: LocalStack) -> list[dict[str, Any]]:
    lines = []
    for raw in (stack.run_dir / "gateway.log").read_bytes().splitlines():
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("logger") == "gateway.access":
            lines.append(record)
    return lines


def test_one_governed_call_is_traced_logged_and_counted(observed: Observed) -> None:
    stack = observed.stack
    token = stack.idp.mint(CANARY_SUBJECT, ["viewer"], stack.audience)
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    params = {"name": "traced__echo", "arguments": {"text": CANARY_ARGUMENT}, "_meta": meta}
    headers = {
        "authorization": f"Bearer {token}",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "traced__echo",
        "traceparent": f"00-{trace_id}-{parent_id}-01",
    }
    observed.upstream.seen.clear()
    observed.opa.seen.clear()
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    resp = httpx.post(f"{stack.data_url}/mcp", json=body, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    assert CANARY_ARGUMENT in resp.text  # echoed: the call went through

    # the audit record of the call
    def audited() -> dict[str, Any] | None:
        page = httpx.get(f"{stack.control_url}/v1/audit/decisions", headers=stack.admin_headers).json()
        items = [i for i in page["items"] if i["action"] == "tools/call" and i["subject"] == CANARY_SUBJECT]
        return items[0] if items else None

    record = _poll(audited)
    assert record is not None and record["allowed"] and record["server"] == "traced"
    decision_id = record["decision_id"]

    # the span tree
    names = {"gateway.auth", "gateway.validation", "gateway.decision", "gateway.upstream"}

    def tree() -> dict[str, Any] | None:
        spans = {s.name: s for s in observed.receiver.of_trace(trace_id)}
        return spans if names <= set(spans) and "POST /mcp" in spans else None

    spans = _poll(tree)
    assert spans, f"spans of the trace: {[s.name for s in observed.receiver.of_trace(trace_id)]}"
    server = spans["POST /mcp"]
    assert server.parent_span_id.hex() == parent_id  # continues the client's trace
    for name in names:
        assert spans[name].parent_span_id == server.span_id, name
    decision = _attributes(spans["gateway.decision"])
    assert decision["gateway.decision_id"] == decision_id
    assert decision["gateway.bundle_revision"] == record["policy_revision"]
    assert decision["gateway.allow"] is True
    upstream = _attributes(spans["gateway.upstream"])
    assert upstream["gateway.server"] == "traced" and upstream["gateway.transport"] == "streamable_http"
    assert _attributes(server)["gateway.decision_id"] == decision_id

    # propagation: the upstream's and OPA's requests carry the trace, under the right spans
    sent_up = [tp for path, tp in observed.upstream.seen if tp is not None]
    assert sent_up, observed.upstream.seen
    assert all(tp.split("-")[1] == trace_id for tp in sent_up)
    assert spans["gateway.upstream"].span_id.hex() in {tp.split("-")[2] for tp in sent_up}
    sent_opa = [tp for path, tp in observed.opa.seen if path.startswith("/v1/data/") and tp is not None]
    assert sent_opa and sent_opa[0].split("-")[1] == trace_id
    assert sent_opa[0].split("-")[2] == spans["gateway.decision"].span_id.hex()

    # canaries: no span attribute carries the token, the subject or the argument
    for span in observed.receiver.spans:
        for value in _attributes(span).values():
            text = str(value)
            assert token not in text and CANARY_ARGUMENT not in text and CANARY_SUBJECT not in text, span.name

    # one access line for the request, with the audit's decision id and the trace id
    lines = [line for line in _access_lines(stack) if line.get("trace_id") == trace_id]
    assert len(lines) == 1, lines
    (line,) = lines
    assert line["decision_id"] == decision_id
    assert line["path"] == "/mcp" and line["status"] == 200 and line["dataplane_id"] == "dp-local"
    assert line["action"] == "tools/call" and line["outcome"] == "allowed"
    log_text = (stack.run_dir / "gateway.log").read_text()
    assert token not in log_text and CANARY_ARGUMENT not in log_text and CANARY_SUBJECT not in log_text

    # metrics on both planes
    data = httpx.get(f"{stack.data_url}/metrics").text
    assert (
        'gateway_dp_requests_total{action="tools/call",outcome="allowed",protocol="2026-07-28",server="traced"} 1.0'
        in data
    )
    assert 'gateway_dp_tool_calls_total{outcome="allowed",server="traced",tool="echo"} 1.0' in data
    assert 'gateway_upstream_duration_seconds_count{server="traced",transport="streamable_http"}' in data
    assert "gateway_opa_available 1.0" in data
    assert CANARY_SUBJECT not in data and CANARY_ARGUMENT not in data

    def control() -> str | None:
        text = httpx.get(f"{stack.control_url}/metrics").text
        return text if 'gateway_cp_ingest_events_total{stream="audit"}' in text else None

    cp = _poll(control)
    assert cp, "no audit ingest counted on the control plane"
    assert 'gateway_cp_bundle_serves_total{outcome="200"}' in cp
    assert 'gateway_cp_ingest_lag_seconds_count{stream="audit"}' in cp
    assert "gateway_cp_db_pool_connections" in cp
