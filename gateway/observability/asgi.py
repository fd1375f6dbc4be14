"""The ASGI side of observability: ``GET /metrics`` and the per-request observer.

:class:`RequestObserver` wraps a plane's app (outermost of its middleware): for each HTTP
request it puts a fresh :class:`~gateway.observability.context.RequestRecord` in context,
opens the SERVER span when tracing is on, and when the response is complete hands the
record, the status and the duration to the plane's metrics (``observe_request``) and, in
JSON log mode, writes the request's one access line. ``/metrics`` is answered by
:class:`MetricsEndpoint` before anything else of the plane runs (no MCP auth, no admin
auth), so a scrape is never refused by them; it is not counted, traced or logged.

Access line (logger ``gateway.access``, level INFO, JSON mode only): ``method``, ``path``
(the route template, ``/mcp/{server}``; ``-`` for a path no route matched, so nothing the
client put in a path is logged), ``status``, ``duration_ms``, ``action``, ``outcome``,
``decision_id``, ``trace_id``, ``plane`` and, on the data plane, ``dataplane_id``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import Secret
from gateway.observability.context import CURRENT, RequestRecord
from gateway.observability.metrics import KNOWN_ACTIONS
from gateway.observability.tracing import incoming_trace_id, trace_id_hex

__all__ = ["METRICS_PATH", "MetricsEndpoint", "RequestObserver"]

METRICS_PATH = "/metrics"

access_log = logging.getLogger("gateway.access")


async def _plain(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _loopback_peer(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0]).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class MetricsEndpoint:
    """``GET /metrics``: the plane's registry in the Prometheus text exposition format (``prometheus_client.CONTENT_TYPE_LATEST``).

    Access (docs/operations.md "Metrics and traces"):

    * ``token`` set (``GATEWAY_METRICS_TOKEN``): ``Authorization: Bearer <token>`` is required
      (401 otherwise, compared in constant time); the ``Host`` is not checked, since a page
      that rebinds DNS to the gateway cannot present the token, and in-cluster scrapers reach
      the pod by its IP address.
    * no token: loopback clients only (403 for any other peer: without a token the metrics,
      which name servers and tools policy may hide from a caller, are not for the network);
      ``allowed_hosts`` (the data plane's DNS-rebinding allow-list), when given, is enforced
      as on every data-plane route (421).

    Args:
        state_key: Lifespan state key of the plane's metrics (``dp_metrics``, ``cp_metrics``).
        token: The scrape token (empty: none).
        allowed_hosts: ``host[:port]`` values accepted without a token, or None (any).

    Answers: 200 text; 405 for a method other than GET/HEAD; 503 before the plane's
    resources are up.
    """

    def __init__(self, state_key: str, *, token: Secret, allowed_hosts: Iterable[str] | None = None) -> None:
        self._key = state_key
        self._token = f"Bearer {token.reveal()}".encode("latin-1") if token else b""
        self._hosts = frozenset(h.lower().encode("latin-1") for h in allowed_hosts) if allowed_hosts else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, b"Method Not Allowed\n", [(b"allow", b"GET, HEAD")])
            return
        headers = scope["headers"]
        if self._token:
            presented = [v for k, v in headers if k == b"authorization"]
            if len(presented) != 1 or not hmac.compare_digest(presented[0], self._token):
                await _plain(send, 401, b"Unauthorized\n", [(b"www-authenticate", b'Bearer realm="metrics"')])
                return
        else:
            if not _loopback_peer(scope):
                await _plain(send, 403, b"Forbidden: set GATEWAY_METRICS_TOKEN to scrape from the network\n")
                return
            hosts = [v.lower() for k, v in headers if k == b"host"]
            if self._hosts is not None and (not hosts or any(h not in self._hosts for h in hosts)):
                await _plain(send, 421, b"Misdirected Request\n")
                return
        metrics = (scope.get("state") or {}).get(self._key)
        if metrics is None:
            await _plain(send, 503, b"metrics not ready\n")
            return
        body = generate_latest(metrics.registry)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE_LATEST.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


class RequestObserver:
    """Pure ASGI middleware: metrics, the access line and the SERVER span of every request.

    Args:
        app: The plane's app (inside this: its host guard, auth, routes).
        plane: ``data`` or ``control`` (the access line's ``plane``).
        metrics_key: Lifespan state key of an object with ``observe_request(scope, record,
            status, seconds)`` (missing: nothing is counted).
        metrics_endpoint: Serves ``GET /metrics`` (:class:`MetricsEndpoint`).
        tracing_key: Lifespan state key of the plane's :class:`~gateway.observability.tracing.Tracing`
            (None or missing: no spans).
        access: Write the access line (JSON log mode).
        dataplane_id: The access line's ``dataplane_id`` (data plane only).

    Cost per request with tracing off and the access line off: a context-variable set and
    reset, one wrapper per ASGI ``send``, two ``perf_counter`` calls and the metrics' dict
    lookup, increment and observation.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        plane: str,
        metrics_key: str,
        metrics_endpoint: ASGIApp,
        tracing_key: str | None = None,
        access: bool = False,
        dataplane_id: str | None = None,
    ) -> None:
        self._app = app
        self._plane = plane
        self._metrics_key = metrics_key
        self._metrics_endpoint = metrics_endpoint
        self._tracing_key = tracing_key
        self._access = access
        self._dataplane_id = dataplane_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if scope["path"] == METRICS_PATH:
            await self._metrics_endpoint(scope, receive, send)
            return
        state: Mapping[str, Any] = scope.get("state") or {}
        record = RequestRecord()
        reset = CURRENT.set(record)
        status = 0

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        tracing = state.get(self._tracing_key) if self._tracing_key is not None else None
        try:
            if tracing is not None and tracing.enabled:
                with tracing.server_span(
                    scope["method"], scope["headers"], {"http.request.method": scope["method"]}
                ) as span:
                    record.trace_id = trace_id_hex(span)
                    try:
                        await self._app(scope, receive, observed_send)
                    finally:
                        _finish_span(span, scope, record, status)
            else:
                await self._app(scope, receive, observed_send)
        finally:
            CURRENT.reset(reset)
            seconds = time.perf_counter() - started
            metrics = state.get(self._metrics_key)
            if metrics is not None:
                metrics.observe_request(scope, record, status or 500, seconds)
            if self._access:
                self._log(scope, record, status or 500, seconds)

    def _log(self, scope: Scope, record: RequestRecord, status: int, seconds: float) -> None:
        action = record.action
        if action is not None and action not in KNOWN_ACTIONS:
            action = "notification" if action.startswith("notifications/") else "other"
        trace_id = record.trace_id or incoming_trace_id(scope["headers"])
        fields = {
            "method": scope["method"],
            "path": _route_template(scope),
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "action": action,
            "outcome": record.outcome,
            "decision_id": record.decision_id,
            "trace_id": trace_id,
            "plane": self._plane,
        }
        if self._dataplane_id is not None:
            fields["dataplane_id"] = self._dataplane_id
        access_log.info(
            "%s %s %d %.1f ms",
            fields["method"],
            fields["path"],
            status,
            fields["duration_ms"],
            extra={"access": fields},
        )


def _route_template(scope: Scope) -> str:
    """The matched route's path template (``/mcp/{server}``), or ``-`` (no route matched)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "-"


def _finish_span(span: Any, scope: Scope, record: RequestRecord, status: int) -> None:
    """Name the SERVER span ``<METHOD> <route template>`` and set what the request established."""
    template = _route_template(scope)
    span.update_name(f"{scope['method']} {template}")
    span.set_attribute("url.path", template)
    span.set_attribute("http.response.status_code", status or 500)
    action = record.action
    if action is not None:
        span.set_attribute("mcp.method.name", action if action in KNOWN_ACTIONS else "other")
    for key, value in (
        ("gateway.decision_id", record.decision_id),
        ("gateway.outcome", record.outcome),
        ("gateway.server", record.server),
        ("mcp.protocol.version", record.protocol),
    ):
        if value is not None:
            span.set_attribute(key, value)
