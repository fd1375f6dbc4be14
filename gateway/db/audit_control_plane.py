"""Queries of the control-plane trail (``control_plane_audit``): one filter set for the page
(:func:`gateway.db.admin.query_audit`) and the export (:mod:`gateway.db.audit_export`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from gateway.db.audit_streams import CONTROL_PLANE_FIELDS

__all__ = [
    "CONTROL_PLANE_COLUMNS",
    "CONTROL_PLANE_SELECT",
    "ControlPlaneQuery",
    "control_plane_item",
    "control_plane_where",
]


@dataclass(frozen=True, slots=True)
class ControlPlaneQuery:
    """Filters of the control-plane trail; None means "any". Every filter is ANDed with the others."""

    actor: str | None = None
    action: str | None = None
    """An action of :data:`gateway.controlplane.authz.ACTIONS`, e.g. ``policies.approve``."""
    allowed: bool | None = None
    """The control-plane policy's decision."""
    status: int | None = None
    """The HTTP status answered."""
    resource_kind: str | None = None
    resource_id: str | None = None
    changes_only: bool = False
    """Only rows that name a resource (a change: registration, upload, approval, grant, ...)."""
    since: datetime | None = None
    """Inclusive lower bound on ``timestamp``."""
    until: datetime | None = None
    """Exclusive upper bound on ``timestamp``."""
    after: tuple[datetime, int] | None = None
    """Keyset position ``(timestamp, id)``: rows strictly past it in ``order``."""
    order: str = "desc"
    """``desc`` newest first, ``asc`` oldest first (by ``timestamp``, then ``id``)."""
    limit: int = 100


def control_plane_where(
    tenant: str, environment: str, q: ControlPlaneQuery, *, keyset: bool = True
) -> tuple[str, list[Any]]:
    """The SQL condition (``$1``-numbered) and its arguments selecting ``q``'s rows of one scope."""
    where = ["tenant = $1", "environment = $2"]
    args: list[Any] = [tenant, environment]
    for column in ("actor", "action", "allowed", "status", "resource_kind", "resource_id"):
        value = getattr(q, column)
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if q.changes_only:
        where.append("resource_kind IS NOT NULL")
    if q.since is not None:
        args.append(q.since)
        where.append(f'"timestamp" >= ${len(args)}')
    if q.until is not None:
        args.append(q.until)
        where.append(f'"timestamp" < ${len(args)}')
    if keyset and q.after is not None:
        args.extend(q.after)
        op = "<" if q.order == "desc" else ">"
        where.append(f'("timestamp", id) {op} (${len(args) - 1}, ${len(args)})')
    return " AND ".join(where), args


CONTROL_PLANE_COLUMNS = tuple(f for f in CONTROL_PLANE_FIELDS if f not in ("tenant", "environment"))
"""The columns of a control-plane trail row, in page and export order."""
CONTROL_PLANE_SELECT = ", ".join(f'"{c}"' if c == "timestamp" else c for c in CONTROL_PLANE_COLUMNS)
""":data:`CONTROL_PLANE_COLUMNS` as a SQL select list."""


def control_plane_item(r: asyncpg.Record) -> dict[str, Any]:
    """One trail row as JSON-ready values (``timestamp`` ISO 8601, ``roles`` a list, ``reasons`` decoded)."""
    item = {c: r[c] for c in CONTROL_PLANE_COLUMNS}
    item["timestamp"] = r["timestamp"].isoformat()
    item["roles"] = list(r["roles"])
    item["reasons"] = orjson.loads(r["reasons"]) if isinstance(r["reasons"], str) else r["reasons"]
    return item
