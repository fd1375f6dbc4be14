"""Runtime audit: the reviewers' queries, aggregates and export (admin); ingest is
:mod:`gateway.controlplane.audit_ingest`. docs/audit.md describes every parameter.

* ``GET /v1/audit/decisions?<filters>&order=&limit=&cursor=`` -> ``{"items", "next_cursor"}``.
* ``GET /v1/audit/decisions/{decision_id}`` -> the event plus ``opa_decision_log``.
* ``GET /v1/audit/stats?since=&until=&<filters>&top=`` -> :func:`gateway.db.audit_stats.decision_stats`.
* ``GET /v1/audit/control-plane?<filters>&order=&limit=&cursor=`` -> ``{"items", "next_cursor"}``.
* ``GET /v1/audit/export?format=ndjson|csv&trail=decisions|control-plane&order=&<filters>`` ->
  a streamed attachment (server-side cursor: constant memory whatever the size).

Every query parameter is validated; a bad or unknown one is a 400 naming it.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import io
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.controlplane._deps import deps
from gateway.controlplane._http import MAX_BIGINT, JSONResponse, check_text, parse_int, parse_rfc3339
from gateway.db import admin as db_admin
from gateway.db import audit as db_audit
from gateway.db import audit_export, audit_stats
from gateway.db.audit import OUTCOMES, DecisionQuery
from gateway.db.audit_control_plane import CONTROL_PLANE_COLUMNS, ControlPlaneQuery
from gateway.db.audit_ingest import EVENT_FIELDS
from gateway.errors import NotFound, RequestRejected

__all__ = [
    "DECISION_FILTERS",
    "MAX_LIMIT",
    "decode_cursor",
    "encode_cursor",
    "export",
    "get_decision",
    "list_control_plane",
    "list_decisions",
    "parse_decision_filters",
    "stats",
]

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_DECISION_ID = 256
"""Longest decision id, in characters (ingest, path parameter and cursor)."""
MAX_CURSOR = 1024
"""Longest accepted ``cursor`` (base64url of ``[timestamp, key]`` or ``[timestamp, key, "asc"]``)."""
MAX_TERMS = 8
"""Most terms in ``q``."""
MAX_TERM = 256
"""Longest ``reason`` and ``q`` term, in characters."""
MAX_LATENCY_MS = 10**9
MAX_STATS_RANGE = timedelta(days=93)
"""Longest ``since``..``until`` of the stats (2232 hourly buckets)."""
DEFAULT_STATS_RANGE = timedelta(hours=24)
MAX_TOP = 100
EXPORT_CHUNK = 64 * 1024
"""Bytes gathered before a chunk of the export is sent."""

DECISION_FILTERS = (
    "subject",
    "client_id",
    "server",
    "tool",
    "action",
    "allowed",
    "outcome",
    "status",
    "error_category",
    "policy_revision",
    "projection_version",
    "protocol_version",
    "dataplane_id",
    "min_latency_ms",
    "reason",
    "q",
    "since",
    "until",
)
"""The runtime trail's filters, shared by the decisions page, the stats and the export."""
_LATENCY = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,6})?")
CONTROL_PLANE_FILTERS = (
    "actor",
    "action",
    "allowed",
    "status",
    "resource_kind",
    "resource_id",
    "changes",
    "since",
    "until",
)
"""The control-plane trail's filters (``GET /v1/audit/control-plane`` and ``trail=control-plane``)."""


def encode_cursor(timestamp: str, key: str | int, order: str) -> str:
    """The opaque page cursor after the row ``(timestamp, key)`` of a page in ``order``."""
    raw = orjson.dumps([timestamp, key] if order == "desc" else [timestamp, key, order])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, order: str, key: Callable[[Any], Any]) -> tuple[datetime, Any]:
    """``(timestamp, key(k))`` of a cursor made by :func:`encode_cursor` for ``order``.

    Raises:
        RequestRejected: Malformed, or made for the other order (400 naming ``cursor``).
    """
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(decoded, list) or len(decoded) not in (2, 3):
            raise ValueError
        made_for = decoded[2] if len(decoded) == 3 else "desc"
        if made_for != order:
            raise RequestRejected(f"cursor was made for order={made_for}; pass the same order")
        return parse_rfc3339(decoded[0], field="cursor"), key(decoded[1])
    except RequestRejected as e:
        if "order=" in str(e):
            raise
        raise RequestRejected("cursor is not valid; pass next_cursor unchanged") from None
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise RequestRejected("cursor is not valid; pass next_cursor unchanged") from None


def _decision_key(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError
    return check_text(value, "cursor", max_length=MAX_DECISION_ID)


def _check_params(params: Any, known: Iterable[str]) -> None:
    unknown = set(params.keys()) - set(known)
    if unknown:
        raise RequestRejected(f"unknown query parameter {sorted(unknown)[0]!r}")


def _bool(raw: str | None, name: str) -> bool | None:
    if raw not in (None, "true", "false"):
        raise RequestRejected(f"{name} must be true or false")
    return None if raw is None else raw == "true"


def _order(raw: str | None, default: Literal["desc", "asc"]) -> Literal["desc", "asc"]:
    raw = raw or default
    if raw == "desc":
        return "desc"
    if raw == "asc":
        return "asc"
    raise RequestRejected("order must be desc (newest first) or asc (oldest first)")


def _time(raw: str | None, name: str) -> datetime | None:
    return parse_rfc3339(raw, field=name) if raw is not None else None


def _term(value: str, name: str) -> str:
    if not value or len(value) > MAX_TERM or "\x00" in value or "\n" in value or "\r" in value:
        raise RequestRejected(f"{name} must be 1..{MAX_TERM} characters, without NUL or line breaks")
    return value


def parse_decision_filters(params: Any, *, order: Literal["desc", "asc"] = "desc") -> DecisionQuery:
    """The :class:`DecisionQuery` of :data:`DECISION_FILTERS` in ``params`` (no cursor, no limit).

    Raises:
        RequestRejected: A malformed value (400 naming the parameter).
    """
    outcome = params.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise RequestRejected(f"outcome must be one of {', '.join(OUTCOMES)}")
    version = params.get("projection_version")
    latency = params.get("min_latency_ms")
    if latency is not None and (not _LATENCY.fullmatch(latency) or float(latency) > MAX_LATENCY_MS):
        raise RequestRejected(f"min_latency_ms must be a number of milliseconds between 0 and {MAX_LATENCY_MS}")
    reason = params.get("reason")
    text = params.get("q")
    terms: tuple[str, ...] = ()
    if text is not None:
        terms = tuple(text.split())
        if not terms or len(terms) > MAX_TERMS:
            raise RequestRejected(f"q must hold 1..{MAX_TERMS} words")
        terms = tuple(_term(t, "q") for t in terms)
    return DecisionQuery(
        subject=check_text(params.get("subject"), "subject"),
        client_id=check_text(params.get("client_id"), "client_id"),
        server=check_text(params.get("server"), "server"),
        tool=check_text(params.get("tool"), "tool"),
        action=check_text(params.get("action"), "action"),
        status=check_text(params.get("status"), "status"),
        error_category=check_text(params.get("error_category"), "error_category"),
        policy_revision=check_text(params.get("policy_revision"), "policy_revision"),
        protocol_version=check_text(params.get("protocol_version"), "protocol_version"),
        dataplane_id=check_text(params.get("dataplane_id"), "dataplane_id"),
        allowed=_bool(params.get("allowed"), "allowed"),
        outcome=outcome,
        projection_version=(
            parse_int(version, "projection_version", maximum=MAX_BIGINT) if version is not None else None
        ),
        min_latency_ms=float(latency) if latency is not None else None,
        reason=_term(reason, "reason") if reason is not None else None,
        terms=terms,
        since=_time(params.get("since"), "since"),
        until=_time(params.get("until"), "until"),
        order=order,
    )


async def list_decisions(request: Request) -> Response:
    """``GET /v1/audit/decisions`` -> ``{"items": [...], "next_cursor": str|null}``.

    Filters: :data:`DECISION_FILTERS` (docs/audit.md); ``order`` ``desc`` (default, newest
    first) or ``asc``; ``limit`` 1..500 (default 50); ``cursor`` as returned (same order).
    Keyset pagination on ``(timestamp, decision_id)``.
    """
    d = deps(request)
    params = request.query_params
    _check_params(params, (*DECISION_FILTERS, "order", "limit", "cursor"))
    order = _order(params.get("order"), "desc")
    q = parse_decision_filters(params, order=order)
    cursor = check_text(params.get("cursor"), "cursor", max_length=MAX_CURSOR)
    limit = parse_int(params.get("limit"), "limit", default=DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
    after = decode_cursor(cursor, order, _decision_key) if cursor else None
    probe = dataclasses.replace(q, limit=limit + 1, after=after)
    items = await db_audit.query_decisions(d.pool, d.config.tenant, d.config.environment, probe)
    last = items[limit - 1] if len(items) > limit else None
    next_cursor = encode_cursor(last["timestamp"], last["decision_id"], order) if last else None
    return JSONResponse({"items": items[:limit], "next_cursor": next_cursor})


async def get_decision(request: Request) -> Response:
    """``GET /v1/audit/decisions/{decision_id}`` -> the event plus ``opa_decision_log`` (or null)."""
    d = deps(request)
    decision_id = check_text(request.path_params["decision_id"], "decision_id", max_length=MAX_DECISION_ID)
    item = await db_audit.get_decision(d.pool, d.config.tenant, d.config.environment, decision_id)
    if item is None:
        raise NotFound("decision not found")
    return JSONResponse(item)


async def stats(request: Request) -> Response:
    """``GET /v1/audit/stats?since=&until=&<filters>&top=`` -> the aggregates.

    ``until`` defaults to now, ``since`` to 24 hours before ``until``; the range is at most
    93 days. ``top`` 1..100 (default 10) bounds each ranking. Shape:
    :func:`gateway.db.audit_stats.decision_stats`.
    """
    d = deps(request)
    params = request.query_params
    _check_params(params, (*DECISION_FILTERS, "top"))
    q = parse_decision_filters(params)
    until = q.until or datetime.now(UTC)
    since = q.since or until - DEFAULT_STATS_RANGE
    if since >= until:
        raise RequestRejected("since must be before until")
    if until - since > MAX_STATS_RANGE:
        raise RequestRejected(f"since..until must span at most {MAX_STATS_RANGE.days} days")
    top = parse_int(params.get("top"), "top", default=10, minimum=1, maximum=MAX_TOP)
    body = await audit_stats.decision_stats(
        d.pool, d.config.tenant, d.config.environment, q, since=since, until=until, top=top
    )
    return JSONResponse(body)


def parse_control_plane_filters(params: Any, *, order: Literal["desc", "asc"] = "desc") -> ControlPlaneQuery:
    """The :class:`ControlPlaneQuery` of :data:`CONTROL_PLANE_FILTERS` in ``params`` (no cursor/limit).

    Raises:
        RequestRejected: A malformed value (400 naming the parameter).
    """
    status = params.get("status")
    changes = _bool(params.get("changes"), "changes")
    return ControlPlaneQuery(
        actor=check_text(params.get("actor"), "actor"),
        action=check_text(params.get("action"), "action", max_length=128),
        allowed=_bool(params.get("allowed"), "allowed"),
        status=parse_int(status, "status", minimum=100, maximum=599) if status is not None else None,
        resource_kind=check_text(params.get("resource_kind"), "resource_kind", max_length=128),
        resource_id=check_text(params.get("resource_id"), "resource_id"),
        changes_only=bool(changes),
        since=_time(params.get("since"), "since"),
        until=_time(params.get("until"), "until"),
        order=order,
    )


def _control_plane_key(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_BIGINT:
        raise ValueError
    return value


def parse_control_plane_page(params: Any) -> ControlPlaneQuery:
    """Filters plus ``order``, ``limit`` (1..1000, default 100) and ``cursor`` of
    ``GET /v1/audit/control-plane``."""
    _check_params(params, (*CONTROL_PLANE_FILTERS, "order", "limit", "cursor"))
    order = _order(params.get("order"), "desc")
    q = parse_control_plane_filters(params, order=order)
    cursor = check_text(params.get("cursor"), "cursor", max_length=MAX_CURSOR)
    limit = parse_int(params.get("limit"), "limit", default=100, minimum=1, maximum=1000)
    after = decode_cursor(cursor, order, _control_plane_key) if cursor else None
    return dataclasses.replace(q, limit=limit, after=after)


async def list_control_plane(request: Request) -> Response:
    """``GET /v1/audit/control-plane`` -> ``{"items": [row, ...], "next_cursor": str|null}``.

    Filters :data:`CONTROL_PLANE_FILTERS`; ``order`` ``desc`` (default) or ``asc``; ``limit``
    1..1000 (default 100); ``cursor`` as returned (same order). Keyset pagination on
    ``(timestamp, id)``. Rows as :func:`gateway.db.admin.control_plane_item`.
    """
    d = deps(request)
    q = parse_control_plane_page(request.query_params)
    probe = dataclasses.replace(q, limit=q.limit + 1)
    async with d.pool.acquire() as conn:
        items = await db_admin.query_audit(conn, d.config.tenant, d.config.environment, probe)
    last = items[q.limit - 1] if len(items) > q.limit else None
    next_cursor = encode_cursor(last["timestamp"], last["id"], q.order) if last else None
    return JSONResponse({"items": items[: q.limit], "next_cursor": next_cursor})


# ------------------------------------------------------------------ export


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return value


class _CsvRows:
    """RFC 4180 CSV lines (``csv`` module quoting, CRLF line ends) of dict rows, header first."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        self._columns = columns
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer)

    def header(self) -> bytes:
        self._writer.writerow(self._columns)
        return self._take()

    def row(self, item: dict[str, Any]) -> bytes:
        self._writer.writerow([_csv_value(item[c]) for c in self._columns])
        return self._take()

    def _take(self) -> bytes:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode()


def _ndjson(item: dict[str, Any]) -> bytes:
    return orjson.dumps(item) + b"\n"


async def _chunks(
    rows: AsyncIterator[dict[str, Any]], encode: Callable[[dict[str, Any]], bytes]
) -> AsyncIterator[bytes]:
    buffer = bytearray()
    async for item in rows:
        buffer += encode(item)
        if len(buffer) >= EXPORT_CHUNK:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


async def export(request: Request) -> Response:
    """``GET /v1/audit/export`` -> the trail as a streamed attachment.

    ``format`` ``ndjson`` (default: one JSON object per line, ``application/x-ndjson``) or
    ``csv`` (a header row, RFC 4180 quoting, ``text/csv``; lists as JSON text, null empty);
    ``trail`` ``decisions`` (default; :data:`DECISION_FILTERS`, columns
    :data:`~gateway.db.audit_ingest.EVENT_FIELDS`) or ``control-plane``
    (:data:`CONTROL_PLANE_FILTERS`, columns :data:`~gateway.db.admin.CONTROL_PLANE_COLUMNS`);
    ``order`` ``asc`` (default: oldest first, as SIEMs ingest) or ``desc``.

    The rows come from a server-side cursor in one read-only snapshot, so memory stays constant
    whatever the size. A failure after the first byte cannot change the status any more: the
    connection is then closed without the final chunk, which HTTP clients report as an
    incomplete body.
    """
    d = deps(request)
    params = request.query_params
    trail = params.get("trail", "decisions")
    fmt = params.get("format", "ndjson")
    if trail not in ("decisions", "control-plane"):
        raise RequestRejected("trail must be decisions or control-plane")
    if fmt not in ("ndjson", "csv"):
        raise RequestRejected("format must be ndjson or csv")
    known = DECISION_FILTERS if trail == "decisions" else CONTROL_PLANE_FILTERS
    _check_params(params, (*known, "trail", "format", "order"))
    order = _order(params.get("order"), "asc")
    tenant, environment = d.config.tenant, d.config.environment
    columns: tuple[str, ...]
    if trail == "decisions":
        dq = parse_decision_filters(params, order=order)
        columns = EVENT_FIELDS

        def rows(conn: Any) -> AsyncGenerator[dict[str, Any], None]:
            return audit_export.stream_decisions(conn, tenant, environment, dq)

    else:
        cq = parse_control_plane_filters(params, order=order)
        columns = CONTROL_PLANE_COLUMNS

        def rows(conn: Any) -> AsyncGenerator[dict[str, Any], None]:
            return audit_export.stream_control_plane(conn, tenant, environment, cq)

    pool = d.pool
    csv_rows = _CsvRows(columns) if fmt == "csv" else None
    encode = csv_rows.row if csv_rows is not None else _ndjson

    async def body() -> AsyncGenerator[bytes, None]:
        head = csv_rows.header() if csv_rows is not None else b""
        async with pool.acquire() as conn:
            source = rows(conn)
            try:
                async for chunk in _chunks(source, encode):
                    yield head + chunk
                    head = b""
            finally:
                await source.aclose()
        if head:
            yield head

    # The first chunk before the status: a database outage or a failing query is still a
    # 503/500 answer, not a 200 with a broken body.
    stream = body()
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = b""

    async def rest() -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    filename = f"audit-{trail}-{stamp}.{fmt}"
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"}
    return StreamingResponse(rest(), media_type=media, headers=headers)
