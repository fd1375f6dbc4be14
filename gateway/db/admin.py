"""Admin identity storage (``0011_admin_identity.sql``): role grants and the control-plane
audit trail (one row per admin request; resource, comment and before/after hashes for a change).

Times are ISO 8601 strings at this module's boundary.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

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


async def record_audit(conn: asyncpg.Connection, tenant: str, environment: str, row: AuditRow) -> None:
    """Append ``row`` to the control-plane audit trail."""
    await conn.execute(
        """
        INSERT INTO control_plane_audit (tenant, environment, request_id, actor, actor_issuer, roles, action, method,
            path, decision_id, allowed, reasons, status, resource_kind, resource_id, comment, before_sha256,
            after_sha256)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
        """,
        tenant,
        environment,
        row.request_id,
        row.actor,
        row.actor_issuer,
        sorted(row.roles),
        row.action,
        row.method,
        row.path,
        row.decision_id,
        row.allowed,
        orjson.dumps(list(row.reasons)).decode(),
        row.status,
        row.resource_kind,
        row.resource_id,
        row.comment,
        row.before_sha256,
        row.after_sha256,
    )


async def query_audit(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    *,
    actor: str | None = None,
    action: str | None = None,
    changes_only: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Rows newest first, filtered; ``changes_only`` keeps rows that name a resource."""
    rows = await conn.fetch(
        """
        SELECT * FROM control_plane_audit
        WHERE tenant = $1 AND environment = $2
          AND ($3::text IS NULL OR actor = $3) AND ($4::text IS NULL OR action = $4)
          AND (NOT $5 OR resource_kind IS NOT NULL)
          AND ($6::timestamptz IS NULL OR "timestamp" >= $6) AND ($7::timestamptz IS NULL OR "timestamp" < $7)
        ORDER BY "timestamp" DESC, id DESC LIMIT $8
        """,
        tenant,
        environment,
        actor,
        action,
        changes_only,
        since,
        until,
        limit,
    )
    return [
        {
            "id": r["id"],
            "timestamp": _iso(r["timestamp"]),
            "request_id": r["request_id"],
            "actor": r["actor"],
            "actor_issuer": r["actor_issuer"],
            "roles": list(r["roles"]),
            "action": r["action"],
            "method": r["method"],
            "path": r["path"],
            "decision_id": r["decision_id"],
            "allowed": r["allowed"],
            "reasons": orjson.loads(r["reasons"]) if isinstance(r["reasons"], str) else r["reasons"],
            "status": r["status"],
            "resource_kind": r["resource_kind"],
            "resource_id": r["resource_id"],
            "comment": r["comment"],
            "before_sha256": r["before_sha256"],
            "after_sha256": r["after_sha256"],
        }
        for r in rows
    ]


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
