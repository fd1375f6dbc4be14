"""Audit ingest: runtime decision events from data planes and OPA decision-log events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

__all__ = ["EVENT_FIELDS", "insert_decision_events", "insert_opa_logs", "pg_safe"]

EVENT_FIELDS = (
    "decision_id",
    "timestamp",
    "tenant",
    "environment",
    "dataplane_id",
    "subject",
    "client_id",
    "action",
    "server",
    "tool",
    "allowed",
    "reasons",
    "policy_revision",
    "projection_version",
    "latency_ms",
    "status",
    "error_category",
    "arguments_sha256",
    "result_sha256",
    "session_id",
    "protocol_version",
)
"""The only columns a runtime audit event may fill, in insert order."""

_QUOTED = ", ".join(f'"{f}"' if f == "timestamp" else f for f in EVENT_FIELDS)
_INSERT_EVENT = f"""
INSERT INTO audit_decisions ({_QUOTED})
VALUES ({", ".join(f"${i}" for i in range(1, len(EVENT_FIELDS) + 1))})
ON CONFLICT (decision_id) DO NOTHING
"""
_INSERT_OPA_LOG = """
INSERT INTO opa_decision_logs (decision_id, tenant, environment, opa_id, path, revision, "timestamp",
                               input, result, erased, masked)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (decision_id) DO NOTHING
"""


def pg_safe(value: Any) -> Any:
    """``value`` with every U+0000 in strings (and object keys) replaced by U+FFFD.

    PostgreSQL ``text`` and ``jsonb`` cannot hold NUL; one NUL in a client-chosen
    string would otherwise fail a whole batch, and audit is all-or-nothing.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {pg_safe(k): pg_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(pg_safe(v) for v in value)
    return value


async def insert_decision_events(conn: asyncpg.Connection | asyncpg.Pool, events: Sequence[Sequence[Any]]) -> None:
    """Insert validated events (tuples ordered as :data:`EVENT_FIELDS`); duplicates are ignored."""
    await conn.executemany(_INSERT_EVENT, [pg_safe(tuple(e)) for e in events])


async def insert_opa_logs(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str, logs: Sequence[dict[str, Any]]
) -> None:
    """Insert OPA decision-log events (already normalised); duplicates are ignored.

    Args:
        logs: Dicts with ``decision_id, opa_id, path, revision, timestamp (datetime|None),
            input, result, erased, masked``.
    """
    await conn.executemany(
        _INSERT_OPA_LOG,
        [
            pg_safe(
                (
                    e["decision_id"],
                    tenant,
                    environment,
                    e["opa_id"],
                    e["path"],
                    e["revision"],
                    e["timestamp"],
                    e["input"],
                    e["result"],
                    e["erased"],
                    e["masked"],
                )
            )
            for e in logs
        ],
    )
