"""Runtime audit ingest (internal): ``POST /v1/audit/events`` from data planes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import MAX_BIGINT, JSONResponse, parse_rfc3339, read_json
from gateway.db import audit_ingest as db_ingest
from gateway.db.audit_ingest import EVENT_FIELDS
from gateway.errors import RequestRejected

__all__ = ["MAX_BATCH", "MAX_CLOCK_AHEAD", "ingest_events", "validate_event"]

MAX_BATCH = 10_000
"""Most events accepted in one ingest request."""
MAX_CLOCK_AHEAD = timedelta(days=1)
"""An event dated further ahead than this is refused (it would create partitions in the future)."""
MAX_STR = 1024
MAX_DECISION_ID = 256
"""Longest decision id, in characters."""
_TYPED_FIELDS = frozenset(
    {"decision_id", "timestamp", "tenant", "environment", "allowed", "reasons", "projection_version", "latency_ms"}
)
"""Event fields checked one by one in :func:`validate_event`."""
_OPTIONAL_STR = tuple(f for f in EVENT_FIELDS if f not in _TYPED_FIELDS)
_TIMESTAMP = EVENT_FIELDS.index("timestamp")
"""Where :func:`validate_event`'s tuple holds the event's time."""
"""Every other event field: a string or null (derived, so a new column cannot be forgotten)."""


def validate_event(event: Any, *, tenant: str, environment: str) -> tuple[Any, ...]:
    """Check one runtime audit event and return its column values in :data:`EVENT_FIELDS` order.

    Unknown keys are dropped, never stored. ``timestamp`` is RFC 3339; ``allowed``
    a boolean; ``reasons`` a list of strings; ``projection_version`` an integer;
    ``latency_ms`` a number (milliseconds); every other field a string or null.

    Raises:
        RequestRejected: A type is wrong, a required field is missing, the event's
            tenant/environment is not this control plane's scope, or it is dated more than
            :data:`MAX_CLOCK_AHEAD` ahead.
    """
    if not isinstance(event, dict):
        raise RequestRejected("each audit event must be an object")
    values: dict[str, Any] = {}
    decision_id = event.get("decision_id")
    if not isinstance(decision_id, str) or not 0 < len(decision_id) <= MAX_DECISION_ID:
        raise RequestRejected(f"decision_id must be a non-empty string of at most {MAX_DECISION_ID} characters")
    values["decision_id"] = decision_id
    values["timestamp"] = parse_rfc3339(event.get("timestamp"), field="timestamp")
    if values["timestamp"] > datetime.now(UTC) + MAX_CLOCK_AHEAD:
        raise RequestRejected("timestamp is more than a day in the future (the data plane's clock is wrong)")
    if event.get("tenant") != tenant or event.get("environment") != environment:
        raise RequestRejected("the event's tenant/environment is not this control plane's scope")
    values["tenant"], values["environment"] = tenant, environment
    for name in _OPTIONAL_STR:
        value = event.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_STR):
            raise RequestRejected(f"{name} must be a string (at most {MAX_STR} characters) or null")
        values[name] = value
    if not isinstance(event.get("allowed"), bool):
        raise RequestRejected("allowed must be a boolean")
    values["allowed"] = event["allowed"]
    reasons = event.get("reasons")
    if reasons is None:
        reasons = []
    if not isinstance(reasons, list) or not all(isinstance(r, str) and len(r) <= MAX_STR for r in reasons):
        raise RequestRejected("reasons must be a list of strings")
    values["reasons"] = reasons
    pv = event.get("projection_version")
    if pv is not None and (isinstance(pv, bool) or not isinstance(pv, int) or not 0 <= pv <= MAX_BIGINT):
        raise RequestRejected(f"projection_version must be an integer between 0 and {MAX_BIGINT}, or null")
    values["projection_version"] = pv
    latency = event.get("latency_ms")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0):
        raise RequestRejected("latency_ms must be a non-negative number or null")
    values["latency_ms"] = float(latency) if latency is not None else None
    return tuple(values[f] for f in EVENT_FIELDS)


async def ingest_events(request: Request) -> Response:
    """``POST /v1/audit/events`` (internal): a JSON array of events -> 202 ``{"accepted": n}``.

    All-or-nothing validation; insertion is idempotent per ``decision_id``, so a data
    plane may replay a batch after a failure.
    """
    d = deps(request)
    body = await read_json(request)
    if not isinstance(body, list):
        raise RequestRejected("the body must be a JSON array of audit events")
    if len(body) > MAX_BATCH:
        raise RequestRejected(f"at most {MAX_BATCH} events per request")
    rows = [validate_event(e, tenant=d.config.tenant, environment=d.config.environment) for e in body]
    if rows:
        await db_ingest.insert_decision_events(d.pool, d.audit.partitions, d.config.tenant, d.config.environment, rows)
        metrics = (request.scope.get("state") or {}).get("cp_metrics")
        if metrics is not None:  # events counted and their lag observed once stored
            metrics.observe_ingest("audit", (row[_TIMESTAMP] for row in rows))
    return JSONResponse({"accepted": len(rows)}, status_code=202)
