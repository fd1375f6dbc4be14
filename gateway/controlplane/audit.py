"""Runtime audit: ingest from data planes (internal) and the reviewers' query API (admin)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import MAX_BIGINT, JSONResponse, check_text, parse_int, parse_rfc3339, read_json
from gateway.db import audit as db_audit
from gateway.db.audit import EVENT_FIELDS, DecisionQuery
from gateway.errors import NotFound, RequestRejected

__all__ = ["MAX_BATCH", "MAX_LIMIT", "get_decision", "ingest_events", "list_decisions", "validate_event"]

MAX_BATCH = 10_000
"""Most events accepted in one ingest request."""
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_STR = 1024
MAX_DECISION_ID = 256
"""Longest decision id, in characters (ingest, path parameter and cursor)."""
MAX_CURSOR = 1024
"""Longest accepted ``cursor`` (base64url of ``[timestamp, decision_id]``)."""
_TYPED_FIELDS = frozenset(
    {"decision_id", "timestamp", "tenant", "environment", "allowed", "reasons", "projection_version", "latency_ms"}
)
"""Event fields checked one by one in :func:`validate_event`."""
_OPTIONAL_STR = tuple(f for f in EVENT_FIELDS if f not in _TYPED_FIELDS)
"""Every other event field: a string or null (derived, so a new column cannot be forgotten)."""


def validate_event(event: Any, *, tenant: str, environment: str) -> tuple[Any, ...]:
    """Check one runtime audit event and return its column values in :data:`EVENT_FIELDS` order.

    Unknown keys are dropped, never stored. ``timestamp`` is RFC 3339; ``allowed``
    a boolean; ``reasons`` a list of strings; ``projection_version`` an integer;
    ``latency_ms`` a number (milliseconds); every other field a string or null.

    Raises:
        RequestRejected: A type is wrong, a required field is missing, or the event's
            tenant/environment is not this control plane's scope.
    """
    if not isinstance(event, dict):
        raise RequestRejected("each audit event must be an object")
    values: dict[str, Any] = {}
    decision_id = event.get("decision_id")
    if not isinstance(decision_id, str) or not 0 < len(decision_id) <= MAX_DECISION_ID:
        raise RequestRejected(f"decision_id must be a non-empty string of at most {MAX_DECISION_ID} characters")
    values["decision_id"] = decision_id
    values["timestamp"] = parse_rfc3339(event.get("timestamp"), field="timestamp")
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
        await db_audit.insert_decision_events(d.pool, rows)
    return JSONResponse({"accepted": len(rows)}, status_code=202)


def _encode_cursor(item: dict[str, Any]) -> str:
    raw = orjson.dumps([item["timestamp"], item["decision_id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        ts, decision_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(decision_id, str):
            raise ValueError
        check_text(decision_id, "cursor", max_length=MAX_DECISION_ID)
        return parse_rfc3339(ts, field="cursor"), decision_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError, RequestRejected):
        raise RequestRejected("cursor is not valid; pass next_cursor unchanged") from None


def _parse_query(params: Any) -> DecisionQuery:
    """Validate every query parameter of ``GET /v1/audit/decisions`` (400 naming the parameter)."""
    allowed_raw = params.get("allowed")
    if allowed_raw not in (None, "true", "false"):
        raise RequestRejected("allowed must be true or false")
    cursor = check_text(params.get("cursor"), "cursor", max_length=MAX_CURSOR)
    since, until = params.get("since"), params.get("until")
    return DecisionQuery(
        subject=check_text(params.get("subject"), "subject"),
        server=check_text(params.get("server"), "server"),
        tool=check_text(params.get("tool"), "tool"),
        allowed=None if allowed_raw is None else allowed_raw == "true",
        action=check_text(params.get("action"), "action"),
        since=parse_rfc3339(since, field="since") if since else None,
        until=parse_rfc3339(until, field="until") if until else None,
        after=_decode_cursor(cursor) if cursor else None,
        limit=parse_int(params.get("limit"), "limit", default=DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT),
    )


async def list_decisions(request: Request) -> Response:
    """``GET /v1/audit/decisions`` -> ``{"items": [...], "next_cursor": str|null}`` newest first.

    Filters: ``subject, server, tool, allowed (true|false), action, since`` (inclusive),
    ``until`` (exclusive), both RFC 3339; ``limit`` 1..500 (default 50); ``cursor`` as
    returned. Keyset pagination on ``(timestamp, decision_id)``.
    """
    d = deps(request)
    q = _parse_query(request.query_params)
    probe = DecisionQuery(**{**q.__dict__, "limit": q.limit + 1})
    items = await db_audit.query_decisions(d.pool, d.config.tenant, d.config.environment, probe)
    next_cursor = _encode_cursor(items[q.limit - 1]) if len(items) > q.limit else None
    return JSONResponse({"items": items[: q.limit], "next_cursor": next_cursor})


async def get_decision(request: Request) -> Response:
    """``GET /v1/audit/decisions/{decision_id}`` -> the event plus ``opa_decision_log`` (or null)."""
    d = deps(request)
    decision_id = check_text(request.path_params["decision_id"], "decision_id", max_length=MAX_DECISION_ID)
    item = await db_audit.get_decision(d.pool, d.config.tenant, d.config.environment, decision_id)
    if item is None:
        raise NotFound("decision not found")
    return JSONResponse(item)
