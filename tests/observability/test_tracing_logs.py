"""Unit tests of tracing (off costs nothing, propagation) and of the JSON log format."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.logredact import RedactingFilter
from gateway.observability.logjson import JsonFormatter
from gateway.observability.tracing import (
    DISABLED,
    NOOP_SPAN,
    Tracing,
    TracingHttpClient,
    incoming_trace_id,
    otlp_traces_url,
    traced_client,
)

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class _Recording:
    """An HttpClient that records the headers of each request."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    @contextlib.asynccontextmanager
    async def _exchange(self) -> AsyncIterator[Any]:
        yield None

    def request(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: float | None
    ) -> Any:
        self.headers.append(dict(headers))
        return self._exchange()

    async def aclose(self) -> None:
        return None


def _tracing() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def test_off_is_one_shared_noop_and_no_wrapper() -> None:
    inner = _Recording()
    assert not DISABLED.enabled
    assert DISABLED.span("gateway.decision") is NOOP_SPAN
    assert DISABLED.server_span("POST", [(b"traceparent", TRACEPARENT.encode())], {}) is NOOP_SPAN
    assert traced_client(inner, DISABLED) is inner  # type: ignore[arg-type]
    assert Tracing.configure("") is DISABLED


def test_otlp_url() -> None:
    assert otlp_traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


async def test_server_span_continues_the_callers_trace_and_children_propagate() -> None:
    tracing, exporter = _tracing()
    inner = _Recording()
    client = TracingHttpClient(inner)  # type: ignore[arg-type]
    async with client.request("POST", "http://opa", body=b"", headers={"a": "1"}, timeout=1):
        pass  # outside any span: unchanged
    with tracing.server_span("POST", [(b"traceparent", TRACEPARENT.encode())], {"http.request.method": "POST"}):
        with tracing.span("gateway.upstream", {"gateway.server": "demo"}, client=True) as upstream:
            async with client.request("POST", "http://u", body=b"", headers={"a": "1"}, timeout=1):
                pass
            upstream_id = format(upstream.get_span_context().span_id, "016x")

    assert inner.headers[0] == {"a": "1"}
    sent = inner.headers[1]["traceparent"]
    assert sent.split("-")[1] == TRACE_ID and sent.split("-")[2] == upstream_id
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert format(spans["POST"].context.trace_id, "032x") == TRACE_ID
    assert format(spans["POST"].parent.span_id, "016x") == "00f067aa0ba902b7"
    assert spans["gateway.upstream"].parent.span_id == spans["POST"].context.span_id


def test_an_exception_marks_the_span_without_its_message() -> None:
    tracing, exporter = _tracing()
    with pytest.raises(ValueError), tracing.span("gateway.decision"):
        raise ValueError("secret-argument-value")
    (span,) = exporter.get_finished_spans()
    assert span.status.description == "ValueError"
    assert not span.events  # the exception (and its message) is not recorded


def test_incoming_trace_id() -> None:
    assert incoming_trace_id([(b"traceparent", TRACEPARENT.encode())]) == TRACE_ID
    assert incoming_trace_id([(b"traceparent", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01")]) is None
    assert incoming_trace_id([(b"traceparent", b"garbage")]) is None
    assert incoming_trace_id([]) is None
    for spelled in ("0x" + TRACE_ID[2:], "+" + TRACE_ID[1:], TRACE_ID.upper(), " " + TRACE_ID[1:]):
        assert incoming_trace_id([(b"traceparent", f"00-{spelled}-00f067aa0ba902b7-01".encode())]) is None, spelled


async def test_a_clients_tracestate_is_not_carried_on_to_opa_or_upstreams() -> None:
    tracing, _ = _tracing()
    inner = _Recording()
    client = TracingHttpClient(inner)  # type: ignore[arg-type]
    vendor = b"evil=" + b"x" * 6000
    with tracing.server_span("POST", [(b"traceparent", TRACEPARENT.encode()), (b"tracestate", vendor)], {}):
        with tracing.span("gateway.decision", client=True):
            async with client.request("POST", "http://opa", body=b"", headers={}, timeout=1):
                pass
    (sent,) = inner.headers
    assert sent["traceparent"].split("-")[1] == TRACE_ID  # the trace continues
    assert "tracestate" not in sent or "evil" not in sent["tracestate"]


def test_json_lines_are_redacted_and_carry_access_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.observability.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.warning(
            "calling %s", "http://u/mcp?apikey=canary-key-7d1 with Authorization: Bearer canarytoken0123456789"
        )
        logger.info("access", extra={"access": {"status": 200, "decision_id": "d-1", "path": "/mcp?token=canary-q"}})
    finally:
        logger.removeHandler(handler)
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert set(first) >= {"ts", "level", "logger", "msg"} and first["level"] == "WARNING"
    assert first["ts"].endswith("Z")
    assert "canary" not in stream.getvalue()
    assert second["status"] == 200 and second["decision_id"] == "d-1"
