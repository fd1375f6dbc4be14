"""Admin identity storage (``0011_admin_identity.sql``): role grants and the control-plane
audit trail (one row per admin request; resource, comment and before/after hashes for a change).

Times are ISO 8601 strings at this module's boundary.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway.db.audit_chain import append
from gateway.db.audit_control_plane import (
    CONTROL_PLANE_SELECT,
    ControlPlaneQuery,
    control_plane_item,
    control_plane_where,
)
from gateway.db.audit_partitions import PartitionMap
from gateway.db.audit_streams import CONTROL_PLANE, CONTROL_PLANE_FIELDS
from gateway.errors import ConflictError, NotFound

__all__ = [
    "AuditRow",
    "delete_grant",
    "grant_role",
    "granted_roles",
    "list_grants",
    "query_audit",
    "record_audit",
    "record_policy_approval",
    "record_server_approval",
]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _grant(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "issuer": row["issuer"],
        "subject": row["subject"],
        "role": row["role"],
        "granted_by": row["granted_by"],
        "comment": row["comment"],
        "granted_at": _iso(row["granted_at"]),
    }


async def granted_roles(
    conn: asyncpg.Connection, tenant: str, environment: str, issuer: str, subject: str
) -> frozenset[str]:
    """Roles the control plane granted to (``issuer``, ``subject``)."""
    rows = await conn.fetch(
        "SELECT role FROM admin_role_grants WHERE tenant = $1 AND environment = $2 AND issuer = $3 AND subject = $4",
        tenant,
        environment,
        issuer,
        subject,
    )
    return frozenset(r["role"] for r in rows)


async def grant_role(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    *,
    issuer: str,
    subject: str,
    role: str,
    granted_by: str,
    comment: str,
) -> dict[str, Any]:
    """Grant ``role``; the grant record.

    Raises:
        ConflictError: The subject already holds that grant.
    """
    try:
        row = await conn.fetchrow(
            """
            INSERT INTO admin_role_grants (tenant, environment, issuer, subject, role, granted_by, comment)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *
            """,
            tenant,
            environment,
            issuer,
            subject,
            role,
            granted_by,
            comment,
        )
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"{subject} already holds {role}") from None
    assert row is not None
    return _grant(row)


async def list_grants(conn: asyncpg.Connection, tenant: str, environment: str) -> list[dict[str, Any]]:
    """Every grant, oldest first."""
    rows = await conn.fetch(
        "SELECT * FROM admin_role_grants WHERE tenant = $1 AND environment = $2 ORDER BY granted_at, id",
        tenant,
        environment,
    )
    return [_grant(r) for r in rows]


async def delete_grant(conn: asyncpg.Connection, tenant: str, environment: str, grant_id: str) -> dict[str, Any]:
    """Revoke a grant; the record it was.

    Raises:
        NotFound: No such grant.
    """
    row = await conn.fetchrow(
        "DELETE FROM admin_role_grants WHERE tenant = $1 AND environment = $2 AND id = $3 RETURNING *",
        tenant,
        environment,
        uuid.UUID(grant_id),
    )
    if row is None:
        raise NotFound("no such role grant")
    return _grant(row)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One admin request, as recorded."""

    request_id: str | None
    actor: str
    actor_issuer: str
    roles: Sequence[str]
    action: str
    method: str
    path: str
    decision_id: str | None
    allowed: bool
    reasons: Sequence[str]
    status: int
    resource_kind: str | None = None
    resource_id: str | None = None
    comment: str | None = None
    before_sha256: str | None = None
    after_sha256: str | None = None


async def record_audit(
    pool: asyncpg.Pool, partitions: PartitionMap, tenant: str, environment: str, row: AuditRow
) -> None:
    """Append ``row`` to the control-plane audit trail, chained (:mod:`gateway.db.audit_chain`)."""
    now = datetime.now(UTC)

    async def take_id(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
        # The id is committed to by the chain, so it is drawn before the row is linked.
        rows[0] = (await conn.fetchval("SELECT nextval('control_plane_audit_record_id_seq')"), *rows[0][1:])

    values = {
        "id": 0,
        "timestamp": now,
        "tenant": tenant,
        "environment": environment,
        "request_id": row.request_id,
        "actor": row.actor,
        "actor_issuer": row.actor_issuer,
        "roles": sorted(row.roles),
        "action": row.action,
        "method": row.method,
        "path": row.path,
        "decision_id": row.decision_id,
        "allowed": row.allowed,
        "reasons": list(row.reasons),
        "status": row.status,
        "resource_kind": row.resource_kind,
        "resource_id": row.resource_id,
        "comment": row.comment,
        "before_sha256": row.before_sha256,
        "after_sha256": row.after_sha256,
    }
    await append(
        pool,
        partitions,
        CONTROL_PLANE,
        tenant,
        environment,
        [tuple(values[f] for f in CONTROL_PLANE_FIELDS)],
        before_insert=take_id,
        dedupe=False,
    )


async def query_audit(
    conn: asyncpg.Connection, tenant: str, environment: str, q: ControlPlaneQuery | None = None, /, **filters: Any
) -> list[dict[str, Any]]:
    """Up to ``q.limit`` trail rows in ``q.order`` (``timestamp``, then ``id``).

    Args:
        q: The filters; or, without it, ``filters`` are :class:`ControlPlaneQuery`'s fields.
    """
    query = q if q is not None else ControlPlaneQuery(**filters)
    where, args = control_plane_where(tenant, environment, query)
    args.append(query.limit)
    direction = "DESC" if query.order == "desc" else "ASC"
    rows = await conn.fetch(
        f"SELECT {CONTROL_PLANE_SELECT} FROM control_plane_audit WHERE {where}"
        f' ORDER BY "timestamp" {direction}, id {direction} LIMIT ${len(args)}',
        *args,
    )
    return [control_plane_item(r) for r in rows]


async def record_policy_approval(
    conn: asyncpg.Connection, tenant: str, environment: str, version: int, approver: str, comment: str
) -> None:
    """Record who approved policy version ``version``, with their comment (in the approval's
    transaction)."""
    await conn.execute(
        """
        UPDATE policy_versions SET approved_by = $4, approval_comment = $5
        WHERE tenant = $1 AND environment = $2 AND version = $3
        """,
        tenant,
        environment,
        version,
        approver,
        comment,
    )


async def record_server_approval(
    conn: asyncpg.Connection, tenant: str, environment: str, name: str, approver: str, comment: str
) -> None:
    """Record who approved server ``name``, with their comment (in the approval's transaction)."""
    await conn.execute(
        """
        UPDATE mcp_servers SET approved_by = $4, approval_comment = $5
        WHERE tenant = $1 AND environment = $2 AND name = $3
        """,
        tenant,
        environment,
        name,
        approver,
        comment,
    )
