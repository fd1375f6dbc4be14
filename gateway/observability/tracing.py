"""OpenTelemetry traces of the data plane, exported over OTLP/HTTP (protobuf); off by default.

On only when an OTLP endpoint is configured (``GATEWAY_OTLP_ENDPOINT``, else the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``: a base URL, ``/v1/traces`` is appended unless the path
already ends with it). Off, :meth:`Tracing.span` is one boolean check returning a shared
no-op object: no span, context or header is created, and the hot-path HTTP client is not
wrapped at all (:func:`traced_client` returns it as is).

On, one governed request makes this tree (names and attributes are stable, documented in
``docs/operations.md`` "Metrics and traces"):

* ``POST /mcp`` (kind SERVER; the parent is the client's W3C ``traceparent``, when valid):
  ``http.request.method``, ``url.path`` (the route template), ``http.response.status_code``,
  ``mcp.method.name``, ``mcp.protocol.version``, ``gateway.server``, ``gateway.outcome``,
  ``gateway.decision_id``;
* ``gateway.auth``; ``gateway.validation`` (a ``tools/call``'s schema check);
  ``gateway.decision``: ``gateway.decision_id``, ``gateway.bundle_revision``,
  ``gateway.allow`` (a discovery filter: ``gateway.allowed_count``); ``gateway.upstream`` (kind CLIENT):
  ``gateway.server``, ``gateway.transport``, ``mcp.method.name``.

Propagation: the hot-path client (:class:`TracingHttpClient`) adds ``traceparent`` (and
``tracestate``) of the current span to every request it sends inside a span: the OPA
sidecar's decision query (under ``gateway.decision``) and each HTTP upstream exchange
(under ``gateway.upstream``). The embedded engine is a foreign call, nothing to carry a
header; a ``stdio`` upstream gets no trace context either (MCP's ``_meta`` would need the
upstream's cooperation; the span still times the exchange).

No span attribute carries a token, a subject or an argument value; exceptions are not
recorded on spans (their text may quote input), only the status ``ERROR`` with the
exception's type name.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.httpclient import HttpClient, HttpResponse

__all__ = [
    "DISABLED",
    "NOOP_SPAN",
    "Tracing",
    "TracingHttpClient",
    "incoming_trace_id",
    "otlp_traces_url",
    "trace_id_hex",
    "traced_client",
]

log = logging.getLogger("gateway.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()
SERVICE_NAME = "mcp-opa-gateway"


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a configured endpoint (a base URL, or the full ``.../v1/traces``)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


class _NoopSpan:
    """What :meth:`Tracing.span` returns when tracing is off: a context manager and span stand-in."""

    __slots__ = ()

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        """Nothing (tracing is off)."""

    def is_recording(self) -> bool:
        """False: nothing is recorded."""
        return False


NOOP_SPAN = _NoopSpan()
"""The one no-op span (shared; never a new object per call)."""


class _LiveSpan:
    """A started span made current for the ``with`` block; an exception sets status ``ERROR``
    with its type name only (never its message)."""

    __slots__ = ("_cm", "_span")

    def __init__(self, cm: contextlib.AbstractContextManager[trace.Span]) -> None:
        self._cm = cm
        self._span: trace.Span | None = None

    def __enter__(self) -> trace.Span:
        self._span = self._cm.__enter__()
        return self._span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        if exc_type is not None and self._span is not None:
            self._span.set_status(Status(StatusCode.ERROR, exc_type.__name__))
        return self._cm.__exit__(exc_type, exc, tb)


class Tracing:
    """One tracer provider per data plane (never the process-global one, so several apps in one
    process keep their own exporters).

    Args:
        provider: An ``opentelemetry.sdk.trace.TracerProvider``, or None: tracing off.

    Attributes:
        enabled: True when spans are made and exported.
    """

    def __init__(self, provider: Any = None) -> None:
        self._provider = provider
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("gateway") if provider is not None else None

    @classmethod
    def configure(cls, endpoint: str, *, attributes: Mapping[str, str] | None = None) -> Tracing:
        """Tracing exported to ``endpoint`` (OTLP/HTTP protobuf, batched), or :data:`DISABLED` for ``""``.

        Args:
            endpoint: Base URL of the collector (``http://otel-collector:4318``) or its
                ``/v1/traces`` URL; ``""`` turns tracing off.
            attributes: Resource attributes added to ``service.name`` (e.g. ``service.instance.id``).

        The sampler is the SDK's default (parent-based, always on), overridable with the standard
        ``OTEL_TRACES_SAMPLER``; exporter headers and timeouts follow the standard
        ``OTEL_EXPORTER_OTLP_*`` variables, the batch delay ``OTEL_BSP_SCHEDULE_DELAY`` (ms).
        """
        if not endpoint:
            return DISABLED
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({"service.name": SERVICE_NAME, **(attributes or {})})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_traces_url(endpoint))))
        return cls(provider)

    def span(self, name: str, attributes: Mapping[str, Any] | None = None, *, client: bool = False) -> Any:
        """A child span of the current one, current inside ``with`` (:data:`NOOP_SPAN` when off).

        Args:
            name: The span's name (``gateway.decision``).
            attributes: Set at the start (bounded values only: never a token or an argument).
            client: Kind CLIENT (an outgoing exchange) instead of INTERNAL.
        """
        if not self.enabled:
            return NOOP_SPAN
        assert self._tracer is not None
        return _LiveSpan(
            self._tracer.start_as_current_span(
                name,
                kind=SpanKind.CLIENT if client else SpanKind.INTERNAL,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )
        )

    def server_span(self, name: str, headers: Iterable[tuple[bytes, bytes]], attributes: Mapping[str, Any]) -> Any:
        """The request's SERVER span, child of the W3C ``traceparent`` among ``headers`` (raw ASGI
        header pairs) when it is valid, else the root of a new trace (:data:`NOOP_SPAN` when off)."""
        if not self.enabled:
            return NOOP_SPAN
        assert self._tracer is not None
        # traceparent only: a client's tracestate (vendor data, up to kilobytes) is not carried on
        # to OPA and the upstreams. The client's sampled flag is honoured (parent-based sampling,
        # the W3C contract); set OTEL_TRACES_SAMPLER to decide otherwise.
        carrier = {}
        for key, value in headers:
            if key == b"traceparent" and len(value) <= 128:
                carrier["traceparent"] = value.decode("latin-1")
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        return _LiveSpan(
            self._tracer.start_as_current_span(
                name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )
        )

    def shutdown(self) -> None:
        """Export what is buffered (up to the exporter's timeout) and stop (blocking; idempotent)."""
        if self._provider is not None:
            try:
                self._provider.shutdown()
            except Exception as exc:  # noqa: BLE001 - a collector that is down must not fail the shutdown
                log.warning("tracing: shutdown failed: %s", type(exc).__name__)
            self._provider = None


_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
"""W3C Trace Context ``traceparent`` (lowercase hex only, as the spec requires)."""

DISABLED = Tracing(None)
"""Tracing off (the default)."""


def trace_id_hex(span: Any) -> str | None:
    """32 lowercase hex digits of ``span``'s trace id, or None (no valid span)."""
    context = span.get_span_context() if span is not NOOP_SPAN else None
    return format(context.trace_id, "032x") if context is not None and context.is_valid else None


def incoming_trace_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The trace id of a well-formed W3C ``traceparent`` among raw ASGI ``headers`` (for the
    access line when tracing is off), else None. Format: ``00-<32 hex>-<16 hex>-<2 hex>``."""
    for key, value in headers:
        if key == b"traceparent":
            match = _TRACEPARENT.fullmatch(value)
            if match is None or match.group(1) == b"0" * 32:
                return None
            return match.group(1).decode("ascii")
    return None


class TracingHttpClient:
    """An :class:`~gateway.httpclient.HttpClient` that adds the current span's ``traceparent``
    (and ``tracestate``) to each request sent inside a valid span; others go unchanged."""

    def __init__(self, inner: HttpClient) -> None:
        self._inner = inner

    def request(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: float | None
    ) -> contextlib.AbstractAsyncContextManager[HttpResponse]:
        """Send through the wrapped client, with the trace context headers when inside a span."""
        if trace.get_current_span().get_span_context().is_valid:
            carrier = dict(headers)
            _PROPAGATOR.inject(carrier)
            headers = carrier
        return self._inner.request(method, url, body=body, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        """Close the wrapped client."""
        await self._inner.aclose()


def traced_client(client: HttpClient, tracing: Tracing) -> HttpClient:
    """``client`` wrapped in :class:`TracingHttpClient` when ``tracing`` is on, else ``client`` itself."""
    return TracingHttpClient(client) if tracing.enabled else client
