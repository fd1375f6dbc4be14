"""Prometheus metrics of both planes, each in its own ``CollectorRegistry`` (never the global one).

Every label value is bounded: an action is one of :data:`KNOWN_ACTIONS` (else ``other``,
``notification``, or the HTTP method's stand-in), a server one the active projection knows
(else ``unknown``; ``none`` for no server), a tool one the projection knows on that server
(else ``unknown``), a protocol revision one of the gateway's (else ``unknown``; ``none``
when the request named none), an outcome one of ``allowed``/``denied``/``rejected``/``error``,
a control-plane route a template of the route table (``unmatched`` otherwise). No label
ever carries a subject, a token or an argument. Names, types and what to alert on:
``docs/operations.md`` "Metrics and traces".

Hot-path cost: label children are bound once per label combination and cached in a dict;
a request then costs one dict lookup, one counter increment and one histogram observation.
Gauges of state (sessions, audit queue and spool, projection, database pool) are read only
when scraped (:class:`_StateCollector`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.observability.context import RequestRecord

__all__ = [
    "KNOWN_ACTIONS",
    "ControlPlaneMetrics",
    "DataPlaneMetrics",
    "spool_bytes",
]

log = logging.getLogger("gateway.metrics")

KNOWN_ACTIONS = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "subscriptions/listen",
    }
)
"""MCP methods that are their own ``action`` label value."""

_ACTION_OF_HTTP = {"GET": "stream", "DELETE": "session_delete"}
"""The ``action`` of a request without a JSON-RPC method: ``GET`` (a session's or a resumed
stream), ``DELETE`` (end of session); anything else (a body refused before parsing, a
refused ``Host``, a probe) is ``none``."""

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds; a request through the gateway takes milliseconds, a streamed one up to minutes."""
OPA_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds; one decision takes 0.1-5 ms (``docs/performance.md``), the timeout is ``opa.timeout``."""
LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)
"""Seconds from an event's own time to its ingest: a batch interval normally, hours after a spool replay."""


def _status_outcome(status: int) -> str:
    """The outcome of a request no audit event described: by its HTTP status."""
    if status >= 500:
        return "error"
    return "rejected" if status >= 400 else "allowed"


def spool_bytes(paths: Iterable[Path]) -> int:
    """Bytes on disk of the audit spool files that exist among ``paths``."""
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:
            continue
    return total


class _StateCollector(Collector):
    """Reads state when scraped: ``collect`` calls ``produce`` (errors are logged, never raised)."""

    def __init__(self, produce: Callable[[], Iterator[Metric]]) -> None:
        self._produce = produce

    def collect(self) -> Iterator[Metric]:
        try:
            yield from list(self._produce())
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail on one broken source
            log.warning("metrics: a state source failed: %s", type(exc).__name__)


class DataPlaneMetrics:
    """The data plane's metrics (see the module doc for the label rules).

    Args:
        projection: The active projection now (``ActiveProjection``: ``servers`` by name with
            their ``tools`` and ``transport``, ``version``, ``revision``), or None.
        protocol_versions: The protocol revisions the gateway serves (label values).
        engine: ``sidecar`` or ``embedded`` (the ``engine`` label of OPA's metrics).

    Attributes:
        registry: This plane's registry, rendered by ``GET /metrics``.
    """

    def __init__(
        self, *, projection: Callable[[], Any], protocol_versions: Iterable[str], engine: str = "sidecar"
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._projection = projection
        self._versions = frozenset(protocol_versions)
        self._engine = engine
        request_labels = ("action", "server", "outcome", "protocol")
        self._requests = Counter(
            "gateway_dp_requests",
            "Data-plane HTTP requests by JSON-RPC method, upstream server, outcome and protocol revision.",
            request_labels,
            registry=self.registry,
        )
        self._request_seconds = Histogram(
            "gateway_dp_request_duration_seconds",
            "Data-plane request duration (first byte in to last byte out), seconds.",
            request_labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self._tool_calls = Counter(
            "gateway_dp_tool_calls",
            "tools/call requests by server, tool (as the projection knows it) and outcome.",
            ("server", "tool", "outcome"),
            registry=self.registry,
        )
        self._opa_seconds = Histogram(
            "gateway_opa_decision_duration_seconds",
            "One decision query to the policy engine (call: one request; list: a discovery filter), seconds.",
            ("query", "engine"),
            buckets=OPA_BUCKETS,
            registry=self.registry,
        )
        self._opa_errors = Counter(
            "gateway_opa_errors",
            "Decision queries without a usable answer: kind unavailable (unreachable, timeout, not ready) "
            "or invalid (undefined or malformed decision).",
            ("engine", "kind"),
            registry=self.registry,
        )
        self._upstream_seconds = Histogram(
            "gateway_upstream_duration_seconds",
            "One upstream exchange (request to final response, relayed messages included), seconds.",
            ("server", "transport"),
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self._jwks_fetches = Counter(
            "gateway_jwks_fetches",
            "JWKS fetches of the caller-token verifier by outcome (ok, error).",
            ("outcome",),
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._tool_children: dict[tuple[str, str, str], Any] = {}
        self._upstream_children: dict[tuple[str, str], Any] = {}
        self._opa_children = {q: self._opa_seconds.labels(q, engine) for q in ("call", "list")}
        self._opa_error_children = {k: self._opa_errors.labels(engine, k) for k in ("unavailable", "invalid")}
        self._jwks_children = {o: self._jwks_fetches.labels(o) for o in ("ok", "error")}
        self._opa_answered: bool | None = None
        self._sessions: Callable[[], int] | None = None
        self._audit: Any = None
        self._spool_files: Callable[[], Iterable[Path]] | None = None
        self._opa_ready: Callable[[], bool] | None = None
        self.registry.register(_StateCollector(self._state))

    # ------------------------------------------------------------------ wiring
    def watch(
        self,
        *,
        sessions: Callable[[], int] | None = None,
        audit: Any = None,
        spool_files: Callable[[], Iterable[Path]] | None = None,
        opa_ready: Callable[[], bool] | None = None,
    ) -> None:
        """Name the state read at scrape time (composition root).

        Args:
            sessions: Live handshake-era sessions (``len`` of the session store).
            audit: The ``AuditShipper`` (``queued``, ``spooled``, ``replayed``, ``shipped``).
            spool_files: The audit spool's files (:func:`spool_bytes` sums their sizes).
            opa_ready: True when the engine has activated its bundle.
        """
        self._sessions, self._audit, self._spool_files, self._opa_ready = sessions, audit, spool_files, opa_ready

    # ------------------------------------------------------------------ hot path
    def observe_request(self, scope: Mapping[str, Any], record: RequestRecord, status: int, seconds: float) -> None:
        """Count one finished request and observe its duration (called by the request observer)."""
        action = record.action
        if action is None:
            action = _ACTION_OF_HTTP.get(scope.get("method", ""), "none")
        elif action not in KNOWN_ACTIONS:
            action = "notification" if action.startswith("notifications/") else "other"
        projection = self._projection()
        servers = projection.servers if projection is not None else {}
        name = record.server
        if name is None:
            name = (scope.get("path_params") or {}).get("server")
        server = "none" if name is None else (name if name in servers else "unknown")
        outcome = record.outcome or _status_outcome(status)
        protocol = record.protocol
        if protocol is None:
            for key, value in scope.get("headers", ()):
                if key == b"mcp-protocol-version":
                    protocol = value.decode("latin-1")
                    break
        protocol = "none" if protocol is None else (protocol if protocol in self._versions else "unknown")
        key = (action, server, outcome, protocol)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self._requests.labels(*key),
                self._request_seconds.labels(*key),
            )
        children[0].inc()
        children[1].observe(seconds)
        if action == "tools/call" and record.tool is not None:
            entry = servers.get(name) if name is not None else None
            tool = record.tool if entry is not None and record.tool in entry.tools else "unknown"
            tkey = (server, tool, outcome)
            child = self._tool_children.get(tkey)
            if child is None:
                child = self._tool_children[tkey] = self._tool_calls.labels(*tkey)
            child.inc()

    def observe_decision(self, query: str, seconds: float, *, outcome: str = "ok") -> None:
        """One decision query took ``seconds``.

        Args:
            query: ``call`` (one request) or ``list`` (a discovery filter).
            seconds: From the query to its parsed answer.
            outcome: ``ok``; ``invalid`` (the engine answered, the decision was undefined or
                malformed); ``unavailable`` (no answer: unreachable, timed out, not ready).
                Both failures count in ``gateway_opa_errors_total{kind}``; ``unavailable``
                also sets ``gateway_opa_available`` to 0 until the next answer.
        """
        self._opa_children["list" if query == "list" else "call"].observe(seconds)
        self._opa_answered = outcome != "unavailable"
        if outcome != "ok":
            self._opa_error_children["unavailable" if outcome == "unavailable" else "invalid"].inc()

    def observe_upstream(self, server: str, transport: str, seconds: float) -> None:
        """One upstream exchange with ``server`` (a name of the projection) over ``transport``."""
        key = (server, transport)
        child = self._upstream_children.get(key)
        if child is None:
            child = self._upstream_children[key] = self._upstream_seconds.labels(server, transport)
        child.observe(seconds)

    def jwks_fetched(self, outcome: str) -> None:
        """One JWKS fetch ended: ``ok`` or ``error``."""
        self._jwks_children["ok" if outcome == "ok" else "error"].inc()

    # ------------------------------------------------------------------ scrape time
    def _state(self) -> Iterator[Metric]:
        if self._sessions is not None:
            yield GaugeMetricFamily(
                "gateway_dp_sessions_open",
                "Handshake-era MCP sessions this data plane holds.",
                value=self._sessions(),
            )
        audit = self._audit
        if audit is not None:
            yield GaugeMetricFamily(
                "gateway_dp_audit_queue_depth", "Audit events waiting in memory to be shipped.", value=audit.queued
            )
            for name, text, value in (
                ("gateway_dp_audit_spooled_events", "Audit events written to the local spool.", audit.spooled),
                ("gateway_dp_audit_replayed_events", "Spooled audit events shipped on replay.", audit.replayed),
                ("gateway_dp_audit_shipped_events", "Audit events the control plane accepted.", audit.shipped),
                (
                    "gateway_dp_audit_rejected_events",
                    "Audit events the control plane refused as invalid.",
                    audit.rejected,
                ),
            ):
                yield CounterMetricFamily(name, text, value=value)
        if self._spool_files is not None:
            yield GaugeMetricFamily(
                "gateway_dp_audit_spool_bytes",
                "Bytes of the audit spool on disk (events waiting for the control plane).",
                value=spool_bytes(self._spool_files()),
            )
        projection = self._projection()
        yield GaugeMetricFamily(
            "gateway_dp_projection_version",
            "Version of the projection this data plane routes with (0: none yet).",
            value=projection.version if projection is not None else 0,
        )
        if projection is not None:
            info = InfoMetricFamily("gateway_dp_projection", "The active projection and OPA bundle revision.")
            info.add_metric([], {"version": str(projection.version), "revision": str(projection.revision)})
            yield info
        ready = self._opa_ready
        available = (ready() if ready is not None else True) and self._opa_answered is not False
        yield GaugeMetricFamily(
            "gateway_opa_available",
            "1 when the policy engine has a bundle active and answered the last decision query, else 0.",
            value=1 if available else 0,
        )


class ControlPlaneMetrics:
    """The control plane's metrics.

    Args:
        pool: The ``asyncpg.Pool`` (size, idle and maximum are read when scraped), or None.

    Attributes:
        registry: This plane's registry, rendered by ``GET /metrics``.
    """

    def __init__(self, pool: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._pool = pool
        self._requests = Counter(
            "gateway_cp_requests",
            "Control-plane HTTP requests by route template, method and status code.",
            ("route", "method", "code"),
            registry=self.registry,
        )
        self._request_seconds = Histogram(
            "gateway_cp_request_duration_seconds",
            "Control-plane request duration by route template (long polls last up to their wait), seconds.",
            ("route",),
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self._bundle_serves = Counter(
            "gateway_cp_bundle_serves",
            "OPA bundle downloads by outcome: 200 (a bundle), 304 (unchanged), error.",
            ("outcome",),
            registry=self.registry,
        )
        self._projection_serves = Counter(
            "gateway_cp_projection_serves",
            "Data-plane projection polls by outcome: 200 (a projection), 304 (unchanged), error.",
            ("outcome",),
            registry=self.registry,
        )
        self._ingested = Counter(
            "gateway_cp_ingest_events",
            "Events stored by stream: decision_log (OPA's decision logs), audit (data-plane audit events).",
            ("stream",),
            registry=self.registry,
        )
        self._lag = Histogram(
            "gateway_cp_ingest_lag_seconds",
            "Seconds from an event's own timestamp to its ingest, by stream.",
            ("stream",),
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.registry.register(_StateCollector(self._state))

    def observe_request(self, scope: Mapping[str, Any], record: RequestRecord, status: int, seconds: float) -> None:
        """Count one finished request by its route template (called by the request observer)."""
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "")
        method = method if method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS") else "other"
        key = (template, method, str(status))
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self._requests.labels(*key),
                self._request_seconds.labels(template),
            )
        children[0].inc()
        children[1].observe(seconds)
        serves = None
        if template.startswith("/v1/opa/bundles/"):
            serves = self._bundle_serves
        elif template == "/v1/dataplane/projection":
            serves = self._projection_serves
        if serves is not None and method == "GET":
            serves.labels(str(status) if status in (200, 304) else "error").inc()

    def observe_ingest(self, stream: str, timestamps: Iterable[datetime | None]) -> None:
        """``stream`` (``decision_log`` or ``audit``) stored one event per timestamp (None: the
        event had none; counted, no lag observed)."""
        now = time.time()
        lag = self._lag.labels(stream)
        count = 0
        for ts in timestamps:
            count += 1
            if ts is not None:
                lag.observe(max(0.0, now - ts.timestamp()))
        self._ingested.labels(stream).inc(count)

    def _state(self) -> Iterator[Metric]:
        pool = self._pool
        if pool is None:
            return
        size, idle = pool.get_size(), pool.get_idle_size()
        connections = GaugeMetricFamily(
            "gateway_cp_db_pool_connections", "PostgreSQL pool connections by state.", labels=["state"]
        )
        connections.add_metric(["in_use"], size - idle)
        connections.add_metric(["idle"], idle)
        yield connections
        yield GaugeMetricFamily(
            "gateway_cp_db_pool_max", "Most connections the pool may open.", value=pool.get_max_size()
        )
