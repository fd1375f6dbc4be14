"""Runtime audit: the reviewers' query API (admin); ingest is :mod:`gateway.controlplane.audit_ingest`."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import JSONResponse, check_text, parse_int, parse_rfc3339
from gateway.db import audit as db_audit
from gateway.db.audit import DecisionQuery
from gateway.errors import NotFound, RequestRejected

__all__ = ["MAX_LIMIT", "get_decision", "list_decisions"]

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_DECISION_ID = 256
"""Longest decision id, in characters (ingest, path parameter and cursor)."""
MAX_CURSOR = 1024
"""Longest accepted ``cursor`` (base64url of ``[timestamp, decision_id]``)."""


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
