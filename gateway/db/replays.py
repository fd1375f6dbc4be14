"""The decision-replay aggregate: replay runs (``policy_replays``) and the decision-log pages they read.

A replay re-evaluates stored OPA decision-log inputs (``opa_decision_logs``, written by
:func:`gateway.db.audit_ingest.insert_opa_logs`) against a candidate policy version; the runner is
:mod:`gateway.controlplane.replay`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from gateway.db._errors import map_db_errors
from gateway.errors import ConflictError, NotFound

__all__ = [
    "LoggedDecision",
    "ReplayWindow",
    "count_inputs",
    "create_replay",
    "fail_orphans",
    "fetch_inputs",
    "finish_replay",
    "get_replay",
    "latest_finished",
    "list_replays",
    "running_ids",
    "update_progress",
]

_COLUMNS = """id::text AS replay_id, policy_version, baseline_version, status, since, until, max_inputs AS "limit",
created_by, created_at, heartbeat_at, finished_at, total, done, error"""

_INSERT = f"""
INSERT INTO policy_replays (id, tenant, environment, policy_version, baseline_version, since, until, max_inputs,
                            created_by, owner)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING {_COLUMNS}
"""
_RUNNING = "SELECT id::text FROM policy_replays WHERE tenant = $1 AND environment = $2 AND status = 'running'"
_FAIL_ORPHANS = """
UPDATE policy_replays SET status = 'failed', finished_at = now(),
       error = 'the control plane running this replay stopped before it finished'
WHERE tenant = $1 AND environment = $2 AND status = 'running'
  AND (heartbeat_at < now() - make_interval(secs => $3) OR (owner = $4 AND NOT (id = ANY($5::uuid[]))))
"""
_PROGRESS = "UPDATE policy_replays SET heartbeat_at = now(), total = $2, done = $3 WHERE id = $1 AND status = 'running'"
_FINISH = """
UPDATE policy_replays SET status = $2, finished_at = now(), heartbeat_at = now(), total = $3, done = $4,
       summary = $5, error = $6
WHERE id = $1
"""
_SELECT_ONE = f"""
SELECT {_COLUMNS}, summary FROM policy_replays
WHERE tenant = $1 AND environment = $2 AND policy_version = $3 AND id = $4
"""
_SELECT_ALL = f"""
SELECT {_COLUMNS}, summary->'flips' AS flips, summary->>'sentence' AS sentence FROM policy_replays
WHERE tenant = $1 AND environment = $2 AND policy_version = $3
ORDER BY created_at DESC, id DESC LIMIT $4
"""
_SELECT_LATEST_DONE = f"""
SELECT {_COLUMNS}, summary FROM policy_replays
WHERE tenant = $1 AND environment = $2 AND policy_version = $3 AND status = 'done'
ORDER BY finished_at DESC, id DESC LIMIT 1
"""

# The decision logs a replay reads: decisions at ``path`` of the scope, with a timestamp, received
# before the replay started (a fixed set while it runs), newest first. The input is fetched as
# JSON text (sent to OPA as is); the fields a flip is grouped by are extracted here.
_LOG_FILTER = """
tenant = $1 AND environment = $2 AND path IN ($3, '/' || $3) AND "timestamp" IS NOT NULL
AND received_at <= $4 AND ($5::timestamptz IS NULL OR "timestamp" >= $5)
AND ($6::timestamptz IS NULL OR "timestamp" < $6)
"""
_COUNT_INPUTS = f"SELECT count(*) FROM (SELECT 1 FROM opa_decision_logs WHERE {_LOG_FILTER} LIMIT $7) AS page"
_FETCH_INPUTS = f"""
SELECT decision_id, "timestamp", revision, input::text AS input, result, erased,
       input->>'action' AS action, input->'subject'->>'sub' AS subject,
       input->'server'->>'name' AS server, input->'tool'->>'name' AS tool
FROM opa_decision_logs
WHERE {_LOG_FILTER} AND ($7::timestamptz IS NULL OR ("timestamp", decision_id) < ($7, $8))
ORDER BY "timestamp" DESC, decision_id DESC LIMIT $9
"""


@dataclass(frozen=True, slots=True)
class ReplayWindow:
    """Which decision logs a replay reads.

    Attributes:
        path: The decision path, e.g. ``gateway_runtime/main/call`` (OPA logs it without
            the leading ``/``; both spellings match).
        as_of: Only logs received up to this instant (the replay's ``created_at``).
        since: Inclusive lower bound on the decision's ``timestamp``, or None.
        until: Exclusive upper bound on the decision's ``timestamp``, or None.
        limit: At most this many decisions, the newest first.
    """

    path: str
    as_of: datetime
    since: datetime | None
    until: datetime | None
    limit: int


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One stored decision-log event, as replay needs it.

    Attributes:
        input_json: The logged (masked) input as JSON text.
        result: The logged result document (``{"revision", "decision"?}``), or None.
        erased: The JSON pointers OPA's mask erased from this event (``/input/arguments``, ...).
        action, subject, server, tool: ``input.action``, ``input.subject.sub``,
            ``input.server.name``, ``input.tool.name`` (None when absent).
    """

    decision_id: str
    timestamp: datetime
    revision: str | None
    input_json: str | None
    result: Any
    erased: list[str]
    action: str | None
    subject: str | None
    server: str | None
    tool: str | None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _record(row: asyncpg.Record) -> dict[str, Any]:
    rec = dict(row)
    for key in ("since", "until", "created_at", "heartbeat_at", "finished_at"):
        rec[key] = _iso(rec[key])
    return rec


async def running_ids(conn: asyncpg.Connection, tenant: str, environment: str) -> list[str]:
    """Return the ids of the scope's replays marked running (at most one)."""
    return [r["id"] for r in await conn.fetch(_RUNNING, tenant, environment)]


async def create_replay(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    *,
    replay_id: str,
    policy_version: int,
    baseline_version: int | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    created_by: str,
    owner: str,
) -> dict[str, Any]:
    """Insert a ``running`` replay of ``policy_version``.

    Returns:
        The record (:func:`get_replay` without ``summary``).

    Raises:
        ConflictError: A replay of the scope is already running (the message names it).
        NotFound: No such policy version.
    """
    try:
        with map_db_errors("replay"):
            row = await conn.fetchrow(
                _INSERT,
                replay_id,
                tenant,
                environment,
                policy_version,
                baseline_version,
                since,
                until,
                limit,
                created_by,
                owner,
            )
    except ConflictError:
        running = await running_ids(conn, tenant, environment)
        which = f" ({running[0]})" if running else ""
        raise ConflictError(f"a replay is already running in this scope{which}; wait for it to finish") from None
    except Exception as exc:
        if isinstance(exc.__cause__, asyncpg.ForeignKeyViolationError):
            raise NotFound(f"policy version {policy_version} not found") from None
        raise
    return _record(row)


async def fail_orphans(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant: str,
    environment: str,
    *,
    stale_after: float,
    owner: str,
    alive: list[str],
) -> int:
    """Mark failed every running replay of the scope whose runner is gone.

    Gone: no heartbeat for ``stale_after`` seconds (any process; database clock), or owned by
    ``owner`` (this process) but not in ``alive`` (its task ended without recording an outcome).

    Returns:
        How many rows were marked failed.
    """
    status = await conn.execute(_FAIL_ORPHANS, tenant, environment, stale_after, owner, alive)
    return int(status.split()[-1])


async def update_progress(
    conn: asyncpg.Connection | asyncpg.Pool, replay_id: str, *, total: int | None, done: int
) -> bool:
    """Record progress and the heartbeat of a running replay.

    Returns:
        False when the row is no longer running (marked failed as an orphan).
    """
    status: str = await conn.execute(_PROGRESS, replay_id, total, done)
    return status.split()[-1] != "0"


async def finish_replay(
    conn: asyncpg.Connection | asyncpg.Pool,
    replay_id: str,
    *,
    status: str,
    total: int | None,
    done: int,
    summary: dict[str, Any] | None,
    error: str | None,
) -> None:
    """Record the outcome: ``status`` ``done`` (with ``summary``) or ``failed`` (with ``error``)."""
    await conn.execute(_FINISH, replay_id, status, total, done, summary, error)


async def get_replay(
    conn: asyncpg.Connection, tenant: str, environment: str, policy_version: int, replay_id: str
) -> dict[str, Any]:
    """Return one replay of ``policy_version`` with its ``summary`` (null until done).

    Raises:
        NotFound: No such replay of that version in the scope.
    """
    row = await conn.fetchrow(_SELECT_ONE, tenant, environment, policy_version, replay_id)
    if row is None:
        raise NotFound(f"replay {replay_id} of policy version {policy_version} not found")
    return _record(row)


async def list_replays(
    conn: asyncpg.Connection, tenant: str, environment: str, policy_version: int, *, limit: int = 100
) -> list[dict[str, Any]]:
    """Return the newest ``limit`` replays of ``policy_version``, each with ``flips`` and ``sentence``
    (null until done) instead of the whole summary."""
    return [_record(r) for r in await conn.fetch(_SELECT_ALL, tenant, environment, policy_version, limit)]


async def latest_finished(
    conn: asyncpg.Connection, tenant: str, environment: str, policy_version: int
) -> dict[str, Any] | None:
    """Return the most recently finished (``done``) replay of ``policy_version`` with its summary, or None."""
    row = await conn.fetchrow(_SELECT_LATEST_DONE, tenant, environment, policy_version)
    return None if row is None else _record(row)


async def count_inputs(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str, w: ReplayWindow) -> int:
    """Return how many decision logs ``w`` selects (at most ``w.limit``)."""
    return int(await conn.fetchval(_COUNT_INPUTS, tenant, environment, w.path, w.as_of, w.since, w.until, w.limit))


async def fetch_inputs(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant: str,
    environment: str,
    w: ReplayWindow,
    *,
    after: tuple[datetime, str] | None,
    size: int,
) -> list[LoggedDecision]:
    """Return the next page of ``w``: up to ``size`` decisions strictly older than ``after``
    (``(timestamp, decision_id)`` of the previous page's last row; None for the first page)."""
    rows = await conn.fetch(
        _FETCH_INPUTS,
        tenant,
        environment,
        w.path,
        w.as_of,
        w.since,
        w.until,
        after[0] if after else None,
        after[1] if after else None,
        size,
    )
    return [
        LoggedDecision(
            decision_id=r["decision_id"],
            timestamp=r["timestamp"],
            revision=r["revision"],
            input_json=r["input"],
            result=r["result"],
            erased=[p for p in r["erased"] if isinstance(p, str)] if isinstance(r["erased"], list) else [],
            action=r["action"],
            subject=r["subject"],
            server=r["server"],
            tool=r["tool"],
        )
        for r in rows
    ]
