"""The runtime-instance aggregate: what each data plane and OPA last reported."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

__all__ = [
    "FORGET_SECONDS",
    "LIVE_SECONDS",
    "list_data_planes",
    "list_opa_instances",
    "record_data_plane",
    "record_opa_status",
    "register_opa_instance",
]

LIVE_SECONDS = 90
"""An instance seen within this many seconds counts as live."""

FORGET_SECONDS = 24 * 3600
"""A data plane or OPA instance not seen for this long is forgotten (deleted): pods replaced
by a rollout or scaled away by an autoscaler do not stay listed in ``GET /v1/projection``."""

_FORGET = """
WITH dp AS (
    DELETE FROM data_planes
    WHERE tenant = $1 AND environment = $2 AND last_seen < now() - make_interval(secs => $3)
)
DELETE FROM opa_instances
WHERE tenant = $1 AND environment = $2 AND last_seen < now() - make_interval(secs => $3)
"""

_UPSERT_DP = """
INSERT INTO data_planes (tenant, environment, id, active_version, state, error_category, last_seen)
VALUES ($1, $2, $3, $4, $5, $6, now())
ON CONFLICT (tenant, environment, id) DO UPDATE SET
    active_version = EXCLUDED.active_version, state = EXCLUDED.state,
    error_category = EXCLUDED.error_category, last_seen = now()
"""
_UPSERT_OPA = """
INSERT INTO opa_instances (tenant, environment, id, bundle_name, active_revision, active_version, state,
                           last_successful_activation, code, message, errors, plugins, opa_version, dataplane_id,
                           last_seen)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now())
ON CONFLICT (tenant, environment, id) DO UPDATE SET
    dataplane_id = COALESCE(EXCLUDED.dataplane_id, opa_instances.dataplane_id),
    bundle_name = EXCLUDED.bundle_name, active_revision = EXCLUDED.active_revision,
    active_version = EXCLUDED.active_version, state = EXCLUDED.state,
    last_successful_activation = EXCLUDED.last_successful_activation, code = EXCLUDED.code,
    message = EXCLUDED.message, errors = EXCLUDED.errors, plugins = EXCLUDED.plugins,
    opa_version = EXCLUDED.opa_version, last_seen = now()
"""
_REGISTER_OPA = """
INSERT INTO opa_instances (tenant, environment, id, state, dataplane_id, last_seen)
VALUES ($1, $2, $3, 'starting', $4, now())
ON CONFLICT (tenant, environment, id) DO UPDATE SET last_seen = now(), dataplane_id = EXCLUDED.dataplane_id
"""
_RETIRE_OPA = """
DELETE FROM opa_instances WHERE tenant = $1 AND environment = $2 AND dataplane_id = $4 AND id <> $3
"""
_LIST_DP = """
SELECT id, active_version, state, error_category, last_seen,
       last_seen > now() - make_interval(secs => $3) AS live
FROM data_planes WHERE tenant = $1 AND environment = $2 ORDER BY id
"""
_LIST_OPA = """
SELECT id, bundle_name, active_revision, active_version, state, last_successful_activation, code, message,
       errors, plugins, opa_version, dataplane_id, last_seen,
       last_seen > now() - make_interval(secs => $3) AS live
FROM opa_instances WHERE tenant = $1 AND environment = $2 ORDER BY id
"""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def record_data_plane(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant: str,
    environment: str,
    *,
    dataplane_id: str,
    active_version: int | None,
    state: str,
    error_category: str | None,
) -> None:
    """Upsert a data plane's report; ``last_seen`` becomes now. Instances of the scope not seen
    for :data:`FORGET_SECONDS` are deleted at the same time."""
    await conn.execute(_UPSERT_DP, tenant, environment, dataplane_id, active_version, state, error_category)
    await conn.execute(_FORGET, tenant, environment, float(FORGET_SECONDS))


async def record_opa_status(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant: str,
    environment: str,
    *,
    opa_id: str,
    bundle_name: str | None,
    active_revision: str | None,
    active_version: int | None,
    state: str,
    last_successful_activation: datetime | None,
    code: str | None,
    message: str | None,
    errors: list[Any],
    plugins: dict[str, Any],
    opa_version: str | None,
    dataplane_id: str | None = None,
) -> None:
    """Upsert an OPA instance's latest status report; ``last_seen`` becomes now.

    ``dataplane_id`` (OPA's ``gateway_dataplane`` label) keeps its stored value when None.
    """
    await conn.execute(
        _UPSERT_OPA,
        tenant,
        environment,
        opa_id,
        bundle_name,
        active_revision,
        active_version,
        state,
        last_successful_activation,
        code,
        message,
        errors,
        plugins,
        opa_version,
        dataplane_id,
    )


async def register_opa_instance(
    pool: asyncpg.Pool, tenant: str, environment: str, *, opa_id: str, dataplane_id: str
) -> None:
    """Record that data plane ``dataplane_id`` started (or still runs) OPA sidecar ``opa_id``.

    A new row is ``state = 'starting'`` with no active version, so the rollout view's
    ``active_version`` stays null until that OPA reports an activated bundle; an existing
    row (the OPA already reported) only has ``last_seen`` refreshed. Rows of other OPA
    instances of the same data plane (predecessors of a restarted sidecar) are deleted.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_RETIRE_OPA, tenant, environment, opa_id, dataplane_id)
        await conn.execute(_REGISTER_OPA, tenant, environment, opa_id, dataplane_id)


async def list_data_planes(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str
) -> list[dict[str, Any]]:
    """Return every data plane of the scope with a ``live`` flag (seen in the last 90 s)."""
    rows = await conn.fetch(_LIST_DP, tenant, environment, float(LIVE_SECONDS))
    return [{**dict(r), "last_seen": _iso(r["last_seen"])} for r in rows]


async def list_opa_instances(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str
) -> list[dict[str, Any]]:
    """Return every OPA instance of the scope with a ``live`` flag (seen in the last 90 s)."""
    rows = await conn.fetch(_LIST_OPA, tenant, environment, float(LIVE_SECONDS))
    return [
        {
            **dict(r),
            "last_seen": _iso(r["last_seen"]),
            "last_successful_activation": _iso(r["last_successful_activation"]),
        }
        for r in rows
    ]
