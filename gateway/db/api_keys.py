"""The API-keys aggregate: machine agents' keys, stored as argon2id hashes (migration 0012).

No function here takes or returns a key: :func:`create_api_key` gets the hash, reads return
metadata only (:data:`_META`), and :func:`projection_api_keys` the hashes the data planes
verify against. The key itself exists only in the ``POST /v1/api-keys`` answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from gateway.db._errors import map_db_errors
from gateway.errors import ConflictError, NotFound

__all__ = ["create_api_key", "list_api_keys", "projection_api_keys", "revoke_api_key"]

_META = "id, subject, roles, description, created_by, created_at, expires_at, revoked_at, revoked_by"
_INSERT = f"""
INSERT INTO api_keys (id, tenant, environment, subject, roles, description, secret_hash, created_by, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING {_META}
"""
_LIST = f"SELECT {_META} FROM api_keys WHERE tenant = $1 AND environment = $2 ORDER BY created_at, id"
_REVOKE = f"""
UPDATE api_keys SET revoked_at = now(), revoked_by = $4
WHERE tenant = $1 AND environment = $2 AND id = $3 AND revoked_at IS NULL
RETURNING {_META}
"""
_EXISTS = "SELECT 1 FROM api_keys WHERE tenant = $1 AND environment = $2 AND id = $3"
_LIVE = """
SELECT id, subject, roles, secret_hash, expires_at FROM api_keys
WHERE tenant = $1 AND environment = $2 AND revoked_at IS NULL AND expires_at > now()
ORDER BY id
"""


def _shown(row: asyncpg.Record, now: datetime | None = None) -> dict[str, Any]:
    """Metadata with ISO timestamps and ``status``: ``active``, ``expired`` or ``revoked``."""
    item = dict(row)
    if item["revoked_at"] is not None:
        item["status"] = "revoked"
    elif now is not None and item["expires_at"] <= now:
        item["status"] = "expired"
    else:
        item["status"] = "active"
    for name in ("created_at", "expires_at", "revoked_at"):
        if item[name] is not None:
            item[name] = item[name].isoformat()
    return item


async def create_api_key(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    *,
    key_id: str,
    subject: str,
    roles: Sequence[str],
    description: str,
    secret_hash: str,
    created_by: str,
    expires_at: datetime,
) -> dict[str, Any]:
    """Store a new key's hash and metadata; return the metadata (``status: active``).

    Raises:
        ConflictError: The id exists (a 64-bit random id: practically never).
        RequestRejected: A value breaks a constraint.
    """
    with map_db_errors(f"api key {key_id}"):
        row = await conn.fetchrow(
            _INSERT,
            key_id,
            tenant,
            environment,
            subject,
            list(roles),
            description,
            secret_hash,
            created_by,
            expires_at,
        )
    assert row is not None
    return _shown(row)


async def list_api_keys(conn: asyncpg.Connection, tenant: str, environment: str) -> list[dict[str, Any]]:
    """Every key of the scope (revoked and expired ones included), oldest first; metadata only."""
    now = await conn.fetchval("SELECT now()")
    return [_shown(r, now) for r in await conn.fetch(_LIST, tenant, environment)]


async def revoke_api_key(
    conn: asyncpg.Connection, tenant: str, environment: str, key_id: str, *, revoked_by: str
) -> dict[str, Any]:
    """Mark ``key_id`` revoked by ``revoked_by``; return its metadata (``status: revoked``).

    Raises:
        NotFound: No such key in the scope.
        ConflictError: Already revoked.
    """
    row = await conn.fetchrow(_REVOKE, tenant, environment, key_id, revoked_by)
    if row is None:
        if await conn.fetchval(_EXISTS, tenant, environment, key_id) is None:
            raise NotFound(f"api key {key_id} not found")
        raise ConflictError(f"api key {key_id} is already revoked")
    return _shown(row)


async def projection_api_keys(conn: asyncpg.Connection, tenant: str, environment: str) -> list[dict[str, Any]]:
    """The live keys (not revoked, not expired) as the routing table carries them.

    Returns:
        ``[{"id", "subject", "roles", "hash", "expires_at"}]``, ``expires_at`` in epoch
        seconds (the data plane checks it with its own clock): never a key.
    """
    return [
        {
            "id": r["id"],
            "subject": r["subject"],
            "roles": list(r["roles"]),
            "hash": r["secret_hash"],
            "expires_at": r["expires_at"].timestamp(),
        }
        for r in await conn.fetch(_LIVE, tenant, environment)
    ]
