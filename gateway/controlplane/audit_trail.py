"""Tamper evidence and volume of the audit trail: signed checkpoints, partitions, retention.

:class:`AuditTrail` lives for the control plane's lifetime (``controlplane_resources``): it
knows the partitions (:class:`~gateway.db.audit_partitions.PartitionMap`), holds the checkpoint
key (:mod:`gateway.controlplane.audit_signing`) and runs the periodic work:

* every ``GATEWAY_AUDIT_CHECKPOINT_INTERVAL`` (60 s) it signs a checkpoint when a chain head
  moved: the heads of every chain of the scope (and the final heads of partitions retention
  dropped), the time, and the SHA-256 of the previous checkpoint's body;
* every ``GATEWAY_AUDIT_MAINTENANCE_INTERVAL`` (300 s) it creates the partitions of the next two
  intervals and, with ``GATEWAY_AUDIT_RETENTION_DAYS`` set, drops the partitions wholly older
  than that: each drop is a control-plane trail record, and a checkpoint signed right after
  records the dropped partitions' final heads, so verification tells retention from deletion.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import orjson

from gateway.config import Config
from gateway.controlplane.audit_signing import CheckpointKeys, load_checkpoint_keys
from gateway.db import admin as db_admin
from gateway.db.audit_chain import seal_unchained
from gateway.db.audit_partitions import Partition, PartitionMap, interval_bounds, list_partitions, mark_dropped
from gateway.db.audit_verify import CHECKPOINT_VERSION, Checkpoint, chain_heads, insert_checkpoint, latest_checkpoint
from gateway.db.pool import DATABASE_DOWN

__all__ = ["RETENTION_ACTOR", "AuditTrail"]

log = logging.getLogger(__name__)

RETENTION_ACTOR = "retention"
"""The trail's actor of a retention drop (issuer ``urn:gateway:control-plane``)."""
_SYSTEM_ISSUER = "urn:gateway:control-plane"


def _lock(tenant: str, environment: str) -> int:
    digest = hashlib.sha256(orjson.dumps(["gw-audit-checkpoint", tenant, environment])).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AuditTrail:
    """The control plane's audit-trail state and periodic work (module docstring).

    Raises:
        ConfigError: The checkpoint key cannot be loaded (constructor).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.partitions = PartitionMap(config.audit.partition_interval)
        self.keys: CheckpointKeys = load_checkpoint_keys(config.audit, config.run_dir)

    async def start(self, pool: asyncpg.Pool) -> None:
        """Link rows left unlinked by migration 0013, create upcoming partitions, apply retention."""
        sealed = await seal_unchained(pool, self.config.tenant, self.config.environment)
        if sealed:
            log.info("audit: linked %d records moved by the partitioning migration", sealed)
        await self.maintain(pool)

    async def maintain(self, pool: asyncpg.Pool) -> list[Partition]:
        """Create the next two intervals' partitions; apply retention; return what was dropped."""
        now = datetime.now(UTC)
        upper = interval_bounds(now, self.partitions.interval)[1]
        await self.partitions.ensure_range(pool, now, interval_bounds(upper, self.partitions.interval)[1])
        return await self.apply_retention(pool, now)

    async def apply_retention(self, pool: asyncpg.Pool, now: datetime) -> list[Partition]:
        """Drop partitions wholly older than the retention period (none when it is 0).

        Each drop is recorded in the control-plane trail with the partition's final chain head
        of this scope (``before_sha256``), then one checkpoint signs every dropped head.
        """
        days = self.config.audit.retention_days
        if days <= 0:
            return []
        horizon = now - timedelta(days=days)
        dropped: list[Partition] = []
        for p in await list_partitions(pool):
            if p.dropped_at is not None or p.upper > horizon:
                continue
            async with pool.acquire() as conn, conn.transaction():
                still = await conn.fetchval(
                    "SELECT dropped_at IS NULL FROM audit_partitions WHERE name = $1 FOR UPDATE", p.name
                )
                if not still:
                    continue  # another control-plane process dropped it
                head = await conn.fetchval(
                    "SELECT hash FROM audit_chain_heads WHERE tenant = $1 AND environment = $2 AND partition = $3",
                    self.config.tenant,
                    self.config.environment,
                    p.name,
                )
                await mark_dropped(conn, p, now)
            dropped.append(p)
            await db_admin.record_audit(
                pool,
                self.partitions,
                self.config.tenant,
                self.config.environment,
                db_admin.AuditRow(
                    request_id=None,
                    actor=RETENTION_ACTOR,
                    actor_issuer=_SYSTEM_ISSUER,
                    roles=(),
                    action="audit.retention.drop",
                    method="-",
                    path=f"/v1/audit/partitions/{p.name}",
                    decision_id=None,
                    allowed=True,
                    reasons=(f"older than {days} days",),
                    status=200,
                    resource_kind="audit_partition",
                    resource_id=p.name,
                    comment=f"retention: {days} days; [{p.lower.isoformat()}, {p.upper.isoformat()})",
                    before_sha256=bytes(head).hex() if head is not None else None,
                ),
            )
            log.info("audit retention: dropped partition %s ([%s, %s))", p.name, p.lower, p.upper)
        if dropped:
            self.partitions.invalidate()
            await self.checkpoint(pool, force=True)
        return dropped

    async def checkpoint(self, pool: asyncpg.Pool, *, force: bool = False) -> Checkpoint | None:
        """Sign and store a checkpoint of the scope's chain heads; None when nothing moved
        since the last one (unless ``force``)."""
        tenant, environment = self.config.tenant, self.config.environment
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock(tenant, environment))
            previous = await latest_checkpoint(conn, tenant, environment)
            heads = await chain_heads(conn, tenant, environment)
            live = [
                {"stream": h["stream"], "partition": h["partition"], "seq": h["seq"], "hash": h["hash"]}
                for h in heads
                if h["dropped_at"] is None
            ]
            dropped = [
                {
                    "stream": h["stream"],
                    "partition": h["partition"],
                    "seq": h["seq"],
                    "hash": h["hash"],
                    "dropped_at": h["dropped_at"].isoformat(),
                }
                for h in heads
                if h["dropped_at"] is not None
            ]
            if previous is not None and not force:
                doc = previous.document()
                if doc.get("heads") == live and doc.get("dropped") == dropped:
                    return None
            now = datetime.now(UTC)
            body: dict[str, Any] = {
                "version": CHECKPOINT_VERSION,
                "tenant": tenant,
                "environment": environment,
                "created_at": now.isoformat(),
                "previous": hashlib.sha256(previous.body).hexdigest() if previous else None,
                "heads": live,
                "dropped": dropped,
            }
            raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
            signature = self.keys.sign(raw)
            new_id = await insert_checkpoint(conn, tenant, environment, now, raw, signature, self.keys.signing_id)
        return Checkpoint(new_id, now, raw, signature, self.keys.signing_id)

    async def run(self, pool: asyncpg.Pool) -> None:
        """Checkpoint and maintain forever, on their intervals; a failure is logged and retried."""
        audit = self.config.audit
        next_checkpoint = next_maintenance = anyio.current_time()
        next_maintenance += audit.maintenance_interval
        while True:
            now = anyio.current_time()
            if now >= next_checkpoint:
                next_checkpoint = now + audit.checkpoint_interval
                await self._guarded("checkpoint", self.checkpoint(pool))
            if now >= next_maintenance:
                next_maintenance = now + audit.maintenance_interval
                await self._guarded("maintenance", self.maintain(pool))
            await anyio.sleep(max(0.0, min(next_checkpoint, next_maintenance) - anyio.current_time()))

    async def _guarded(self, what: str, work: Any) -> None:
        try:
            await work
        except DATABASE_DOWN as exc:
            log.warning("audit %s skipped: database unavailable (%s)", what, type(exc).__name__)
        except Exception:
            log.exception("audit %s failed", what)
