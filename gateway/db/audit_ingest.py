"""Audit ingest: runtime decision events from data planes and OPA decision-log events.

Both are chained and copied in batches (:func:`gateway.db.audit_chain.append`): one
transaction per batch, ``COPY`` in binary, duplicates (by ``decision_id`` and ``timestamp``)
skipped, so a sender may replay a batch after a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway.db.audit_chain import append, pg_safe
from gateway.db.audit_partitions import PartitionMap
from gateway.db.audit_rollups import record_ingested
from gateway.db.audit_streams import DECISIONS, EVENT_FIELDS, OPA_LOG_FIELDS, OPA_LOGS

__all__ = ["EVENT_FIELDS", "insert_decision_events", "insert_opa_logs", "pg_safe"]


async def insert_decision_events(
    pool: asyncpg.Pool,
    partitions: PartitionMap,
    tenant: str,
    environment: str,
    events: Sequence[Sequence[Any]],
) -> int:
    """Chain and insert validated events of one scope (tuples ordered as :data:`EVENT_FIELDS`).

    The hourly rollups of the new events (:func:`gateway.db.audit_rollups.record_ingested`) are
    updated in the same transaction.

    Returns:
        How many were new (duplicates and events past retention are skipped).
    """
    return await append(pool, partitions, DECISIONS, tenant, environment, events, after_copy=record_ingested)


async def insert_opa_logs(
    pool: asyncpg.Pool, partitions: PartitionMap, tenant: str, environment: str, logs: Sequence[dict[str, Any]]
) -> int:
    """Chain and insert OPA decision-log events (already normalised); duplicates are skipped.

    Args:
        logs: Dicts with ``decision_id, opa_id, path, revision, timestamp (datetime|None:
            the receipt time is used), input, result, erased, masked``.

    Returns:
        How many were new.
    """
    now = datetime.now(UTC)
    rows = [
        tuple(
            tenant
            if f == "tenant"
            else environment
            if f == "environment"
            else (e.get(f) or now)
            if f == "timestamp"
            else e.get(f)
            for f in OPA_LOG_FIELDS
        )
        for e in logs
    ]
    return await append(pool, partitions, OPA_LOGS, tenant, environment, rows)
