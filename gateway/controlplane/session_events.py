"""The session events feed: data planes share what a sealed MCP session id cannot carry.

``POST /v1/dataplane/session-events`` (internal token) with ``{"dataplane_id", "events":
[{"session_ref", "kind", "value", "expires_at"}]}`` stores up to :data:`MAX_EVENTS` events
(``kind`` ``ended``: a ``DELETE``, ``value`` null; ``log_level``: a ``logging/setLevel``,
``value`` one of RFC 5424's level names as MCP spells them; ``expires_at`` Unix seconds, when
the session's id stops opening anyway) and answers 204.

``GET /v1/dataplane/session-events?after=<seq>&limit=<n>`` answers ``{"events": [{"seq",
"session_ref", "kind", "value", "expires_at"}], "next": <seq>}``: the unexpired events after
``after``, oldest first, and the cursor to ask from next (the last event's ``seq``: sequence
numbers become visible in commit order, :mod:`gateway.db.session_events`). Every data plane of the tenant and environment reads every event. Source: MCP 2025-11-25
``basic/transports`` "Session Management" (a terminated session's id gets 404),
``server/utilities/logging``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import MAX_BIGINT, JSONResponse, parse_int, read_json
from gateway.db import session_events as db_events
from gateway.errors import RequestRejected

__all__ = ["LOG_LEVELS", "MAX_EVENTS", "get_session_events", "post_session_events"]

MAX_EVENTS = 1000
"""Most events one ``POST`` carries (and one ``GET`` answers by default)."""

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
"""The levels ``logging/setLevel`` takes (MCP 2025-11-25 ``server/utilities/logging``)."""

_REF = re.compile(r"sr-[0-9a-f]{24}")
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_MAX_EXPIRY = 253402300799  # 9999-12-31T23:59:59Z


def _event(raw: Any, i: int) -> tuple[str, str, str | None, datetime]:
    where = f"events[{i}]"
    if not isinstance(raw, dict) or set(raw) - {"session_ref", "kind", "value", "expires_at"}:
        raise RequestRejected(f"{where} must be an object with session_ref, kind, value, expires_at")
    ref, kind, value, expires = raw.get("session_ref"), raw.get("kind"), raw.get("value"), raw.get("expires_at")
    if not isinstance(ref, str) or not _REF.fullmatch(ref):
        raise RequestRejected(f"{where}.session_ref must match ^sr-[0-9a-f]{{24}}$")
    if kind == "ended":
        if value is not None:
            raise RequestRejected(f"{where}.value must be null for kind ended")
    elif kind == "log_level":
        if value not in LOG_LEVELS:
            raise RequestRejected(f"{where}.value must be one of {', '.join(LOG_LEVELS)}")
    else:
        raise RequestRejected(f"{where}.kind must be ended or log_level")
    if not isinstance(expires, int) or isinstance(expires, bool) or not 0 < expires <= _MAX_EXPIRY:
        raise RequestRejected(f"{where}.expires_at must be Unix seconds")
    return ref, kind, value, datetime.fromtimestamp(expires, UTC)


async def post_session_events(request: Request) -> Response:
    """``POST /v1/dataplane/session-events``: store a data plane's session events; 204.

    Raises:
        RequestRejected: 400 naming the first malformed field.
    """
    d = deps(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise RequestRejected("body must be an object with dataplane_id and events")
    dataplane_id, raw_events = body.get("dataplane_id"), body.get("events")
    if not isinstance(dataplane_id, str) or not _ID.fullmatch(dataplane_id):
        raise RequestRejected("dataplane_id must match ^[A-Za-z0-9_.:-]{1,128}$")
    if not isinstance(raw_events, list) or not 1 <= len(raw_events) <= MAX_EVENTS:
        raise RequestRejected(f"events must be an array of 1 to {MAX_EVENTS} events")
    events = [_event(raw, i) for i, raw in enumerate(raw_events)]
    await db_events.append_events(d.pool, d.config.tenant, d.config.environment, dataplane_id, events)
    return Response(status_code=204)


async def get_session_events(request: Request) -> Response:
    """``GET /v1/dataplane/session-events?after=&limit=``: the feed after ``after`` (see module)."""
    d = deps(request)
    after = parse_int(request.query_params.get("after"), "after", default=0, maximum=MAX_BIGINT)
    limit = parse_int(request.query_params.get("limit"), "limit", default=MAX_EVENTS, minimum=1, maximum=MAX_EVENTS)
    events, cursor = await db_events.read_events(d.pool, d.config.tenant, d.config.environment, after, limit)
    body = {
        "events": [
            {
                "seq": e.seq,
                "session_ref": e.session_ref,
                "kind": e.kind,
                "value": e.value,
                "expires_at": int(e.expires_at.timestamp()),
            }
            for e in events
        ],
        "next": cursor,
    }
    return JSONResponse(body, headers={"cache-control": "no-store"})
