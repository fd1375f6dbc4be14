"""The policy-version aggregate: uploaded Rego module sets, their tests and check results, and
their approval state."""

from __future__ import annotations

from typing import Any

import asyncpg

from gateway.db._errors import map_db_errors
from gateway.errors import NotFound

__all__ = ["activate_policy", "active_policy", "create_policy", "get_policy", "list_policies"]

_COLUMNS = (
    "version, tenant, environment, sha256, status, created_at, approved_at, created_by, approved_by, "
    "approval_comment, checks"
)
_SOURCES = "modules, tests, data"

_INSERT = f"""
INSERT INTO policy_versions (tenant, environment, modules, tests, data, sha256, checks, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING {_COLUMNS}, {_SOURCES}
"""
_SELECT_ONE = f"""
SELECT {_COLUMNS}, {_SOURCES} FROM policy_versions
WHERE tenant = $1 AND environment = $2 AND version = $3
"""
_SELECT_ALL = f"""
SELECT {_COLUMNS}, ARRAY(SELECT jsonb_object_keys(modules) ORDER BY 1) AS files,
       ARRAY(SELECT jsonb_object_keys(tests) ORDER BY 1) AS test_files
FROM policy_versions WHERE tenant = $1 AND environment = $2 ORDER BY version DESC
"""
_SELECT_ACTIVE = f"""
SELECT {_COLUMNS}, {_SOURCES} FROM policy_versions
WHERE tenant = $1 AND environment = $2 AND status = 'active'
"""
_SUPERSEDE = """
UPDATE policy_versions SET status = 'superseded'
WHERE tenant = $1 AND environment = $2 AND status = 'active' AND version <> $3
"""
_ACTIVATE = f"""
UPDATE policy_versions SET status = 'active', approved_at = now()
WHERE tenant = $1 AND environment = $2 AND version = $3
RETURNING {_COLUMNS}, {_SOURCES}
"""


def _record(row: asyncpg.Record, *, full: bool) -> dict[str, Any]:
    rec = dict(row)
    rec["created_at"] = rec["created_at"].isoformat()
    rec["approved_at"] = rec["approved_at"].isoformat() if rec["approved_at"] else None
    if full:
        rec["files"] = sorted(rec["modules"])
        rec["test_files"] = sorted(rec["tests"])
    return rec


async def create_policy(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    *,
    modules: dict[str, str],
    data: dict[str, Any] | None,
    sha256: str,
    tests: dict[str, str] | None = None,
    checks: dict[str, Any] | None = None,
    created_by: str = "admin",
) -> dict[str, Any]:
    """Store a validated module set as a new ``pending_approval`` version.

    Args:
        modules: ``{file: Rego source}`` of the modules that go into the OPA bundle.
        tests: ``{file: Rego source}`` of the version's ``*_test.rego`` modules (never bundled).
        checks: The upload's check results (:func:`gateway.controlplane.rego.validate_policy`).
        created_by: Who uploaded it (``actor_of(request).name``).

    Returns:
        The record with ``version`` (a global sequence), ``files``, ``test_files``,
        ``modules``, ``tests``, ``data``, ``checks`` and ``created_by``.
    """
    with map_db_errors("policy version"):
        row = await conn.fetchrow(_INSERT, tenant, environment, modules, tests or {}, data, sha256, checks, created_by)
    return _record(row, full=True)


async def get_policy(conn: asyncpg.Connection, tenant: str, environment: str, version: int) -> dict[str, Any]:
    """Return one version with its ``modules``, ``tests``, ``data`` and ``checks``.

    Raises:
        NotFound: No such version in the scope.
    """
    row = await conn.fetchrow(_SELECT_ONE, tenant, environment, version)
    if row is None:
        raise NotFound(f"policy version {version} not found")
    return _record(row, full=True)


async def list_policies(conn: asyncpg.Connection, tenant: str, environment: str) -> list[dict[str, Any]]:
    """Return every version of the scope, newest first, with ``files``, ``test_files`` and
    ``checks`` but no sources."""
    return [_record(r, full=False) for r in await conn.fetch(_SELECT_ALL, tenant, environment)]


async def active_policy(conn: asyncpg.Connection, tenant: str, environment: str) -> dict[str, Any] | None:
    """Return the active version (with modules, tests and data), or None before any approval.

    Only ``modules`` and ``data`` belong in a bundle; ``tests`` never do.
    """
    row = await conn.fetchrow(_SELECT_ACTIVE, tenant, environment)
    return None if row is None else _record(row, full=True)


async def activate_policy(conn: asyncpg.Connection, tenant: str, environment: str, version: int) -> dict[str, Any]:
    """Make ``version`` the active one (superseding the previous); also a rollback.

    Call inside the transaction that also compiles the projection.

    Raises:
        NotFound: No such version in the scope.
    """
    with map_db_errors(f"policy version {version}"):
        if await conn.fetchrow(_SELECT_ONE, tenant, environment, version) is None:
            raise NotFound(f"policy version {version} not found")
        await conn.execute(_SUPERSEDE, tenant, environment, version)
        row = await conn.fetchrow(_ACTIVATE, tenant, environment, version)
    return _record(row, full=True)
