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
from gateway.db.audit_chain import lock_key, seal_unchained
from gateway.db.audit_partitions import (
    Partition,
    PartitionMap,
    catalog_partitions,
    interval_bounds,
    mark_dropped,
    partition_date,
)
from gateway.db.audit_rollups import forget_before
from gateway.db.audit_streams import STREAMS
from gateway.db.audit_verify import (
    CHECKPOINT_VERSION,
    Checkpoint,
    chain_heads,
    insert_checkpoint,
    latest_checkpoint,
    verify_partition,
)
from gateway.db.pool import DATABASE_DOWN
from gateway.errors import AuditChainBroken

__all__ = ["RETENTION_ACTOR", "AuditTrail"]

log = logging.getLogger(__name__)

RETENTION_ACTOR = "retention"
"""The trail's actor of a retention drop (issuer ``urn:gateway:control-plane``)."""
_SYSTEM_ISSUER = "urn:gateway:control-plane"


def _lock(tenant: str, environment: str) -> int:
    """The scope's checkpoint lock (no stream is named ``checkpoints``, so it is no stream's)."""
    return lock_key(tenant, environment, "checkpoints")


def _signed_head(h: dict[str, Any]) -> dict[str, Any]:
    """A chain head (:func:`~gateway.db.audit_verify.chain_heads`) as a checkpoint signs it."""
    return {
        "stream": h["stream"],
        "partition": h["partition"],
        "seq": h["seq"],
        "hash": h["hash"],
        "key": h["record_key"],
        "ts": h["record_ts"].isoformat() if h["record_ts"] else None,
    }


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
        """Link rows left unlinked by migration 0013, create upcoming partitions, apply retention
        (a failure of the last two is logged, not raised)."""
        sealed = await seal_unchained(pool, self.config.tenant, self.config.environment)
        if sealed:
            log.info("audit: linked %d records moved by the partitioning migration", sealed)
        # Never fatal: a trail that no longer matches its checkpoint must not keep the control
        # plane from starting (it is logged, and verification shows it); ingest creates any
        # partition it needs on demand.
        await self._guarded("maintenance", self.maintain(pool))

    async def maintain(self, pool: asyncpg.Pool) -> list[Partition]:
        """Create the next two intervals' partitions; apply retention; return what was dropped."""
        now = datetime.now(UTC)
        upper = interval_bounds(now, self.partitions.interval)[1]
        await self.partitions.ensure_range(pool, now, interval_bounds(upper, self.partitions.interval)[1])
        return await self.apply_retention(pool, now)

    async def apply_retention(self, pool: asyncpg.Pool, now: datetime) -> list[Partition]:
        """Drop partitions wholly older than the retention period (none when it is 0).

        Which partitions, and their bounds, come from PostgreSQL's catalog, never from the
        ``audit_partitions`` registry (a row there proves nothing). Each drop is one transaction
        under the checkpoint lock: the chain still matches the newest checkpoint (else nothing is
        dropped: the trail was tampered with, and the drop would hide it), the table is dropped,
        and a checkpoint signing the partition's final head is stored. Then a control-plane trail
        record names the partition, with this scope's final head as ``before_sha256``.
        """
        days = self.config.audit.retention_days
        if days <= 0:
            return []
        horizon = now - timedelta(days=days)
        dropped: list[Partition] = []
        for p in await catalog_partitions(pool):
            if p.upper > horizon:
                continue
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1)", _lock(self.config.tenant, self.config.environment)
                )
                if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{p.name}"'):
                    continue  # another control-plane process dropped it meanwhile
                # A drop must never hide tampering: the partition's chain must be whole (every
                # link of this scope's records); the other chains must extend the checkpoint,
                # which the checkpoint signed below checks (raising rolls the drop back).
                problem = await verify_partition(conn, self.config.tenant, self.config.environment, p.stream, p.name)
                if problem is not None:
                    log.error("audit retention refused: %s", problem)
                    raise AuditChainBroken(f"retention of {p.name} refused: {problem}")
                head = await conn.fetchval(
                    "SELECT hash FROM audit_chain_heads WHERE tenant = $1 AND environment = $2 AND partition = $3",
                    self.config.tenant,
                    self.config.environment,
                    p.name,
                )
                await mark_dropped(conn, p, now)
                if p.stream == "decisions":  # the stats' rollups of what was dropped go with it
                    await forget_before(conn, self.config.tenant, self.config.environment, p.upper)
                # raises AuditChainBroken (and the drop is rolled back) when the chain was tampered with
                await self._checkpoint_in(conn, now, dropped_now={(p.stream, p.name)}, force=True)
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
        return dropped

    async def checkpoint(self, pool: asyncpg.Pool, *, force: bool = False) -> Checkpoint | None:
        """Sign and store a checkpoint of the scope's chain heads; None when nothing moved
        since the last one (unless ``force``).

        Raises:
            AuditChainBroken: The chain no longer matches the previous checkpoint (a signed record
                was rewritten or deleted, or a partition vanished outside retention); nothing
                is signed, so the tampering stays visible to verification.
        """
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock(self.config.tenant, self.config.environment))
            return await self._checkpoint_in(conn, datetime.now(UTC), dropped_now=set(), force=force)

    async def _continuity(
        self, conn: asyncpg.Connection, previous: dict[str, Any], live: dict[tuple[str, str], dict[str, Any]],
        dropped_now: set[tuple[str, str]], now: datetime,
    ) -> str | None:  # fmt: skip
        """Why the current heads do not extend ``previous`` (None: they do).

        Every head the previous checkpoint signed must still be there, at least as long, and
        its record (found by its primary key) must still carry the signed hash; or its
        partition was dropped by retention (this call's, or, for a partition another scope's
        retention dropped, one wholly past this scope's retention by its name's date).
        """
        streams = {s.name: s for s in STREAMS}
        days = self.config.audit.retention_days
        horizon = now - timedelta(days=days) if days > 0 else None
        longest = timedelta(days={"day": 1, "week": 7, "month": 31}[self.partitions.interval])
        for h in previous.get("heads", []):
            key = (h["stream"], h["partition"])
            if key in dropped_now:
                continue
            cur = live.get(key)
            if cur is None:
                lower = partition_date(h["partition"])
                if horizon is not None and lower is not None and lower + longest <= horizon:
                    continue  # past retention: another scope sharing the database dropped it
                return f"{h['stream']}/{h['partition']} signed at seq {h['seq']} is gone"
            if cur["seq"] < h["seq"]:
                return f"{h['stream']}/{h['partition']} was signed at seq {h['seq']}; the head is at {cur['seq']}"
            stream = streams[h["stream"]]
            if h.get("key") is None or h.get("ts") is None:
                return f"{h['stream']}/{h['partition']}: the signed head names no record"
            numeric = stream.key[0] == "id"
            row = await conn.fetchrow(
                f"SELECT chain_seq, chain_hash FROM {stream.table} WHERE {stream.key[0]} = $1"
                ' AND "timestamp" = $2 AND tenant = $3 AND environment = $4',
                int(h["key"]) if numeric else h["key"],
                datetime.fromisoformat(h["ts"]),
                self.config.tenant,
                self.config.environment,
            )
            if row is None or row["chain_seq"] != h["seq"] or bytes(row["chain_hash"]).hex() != h["hash"]:
                return f"{h['stream']}/{h['partition']}: the record signed at seq {h['seq']} was rewritten or deleted"
        return None

    async def _checkpoint_in(
        self, conn: asyncpg.Connection, now: datetime, *, dropped_now: set[tuple[str, str]], force: bool
    ) -> Checkpoint | None:
        """:meth:`checkpoint` inside the caller's transaction, which holds the checkpoint lock."""
        tenant, environment = self.config.tenant, self.config.environment
        previous = await latest_checkpoint(conn, tenant, environment)
        heads = await chain_heads(conn, tenant, environment)
        present = {p.name for p in await catalog_partitions(conn)}
        live = {
            (h["stream"], h["partition"]): _signed_head(h) for h in heads if h["partition"] in present and h["seq"] > 0
        }
        doc = previous.document() if previous else {}
        problem = await self._continuity(conn, doc, live, dropped_now, now) if previous else None
        if problem is not None:
            log.error("audit checkpoint refused: %s (since checkpoint %s)", problem, previous.id if previous else "-")
            raise AuditChainBroken(
                f"the audit trail no longer matches checkpoint {previous.id if previous else '-'}: {problem}"
            )
        dropped = list(doc.get("dropped", []))
        known = {(d["stream"], d["partition"]) for d in dropped}
        gone = {(h["stream"], h["partition"]): h for h in doc.get("heads", [])}
        for h in heads:  # dropped now, possibly never signed before
            if (h["stream"], h["partition"]) in dropped_now and h["seq"] > 0:
                gone.setdefault((h["stream"], h["partition"]), _signed_head(h))
        for key, h in gone.items():
            if key not in live and key not in known:
                dropped.append({**h, "dropped_at": now.isoformat()})
        heads_out = [live[k] for k in sorted(live)]
        if previous is not None and not force and doc.get("heads") == heads_out and doc.get("dropped") == dropped:
            return None
        body: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "tenant": tenant,
            "environment": environment,
            "created_at": now.isoformat(),
            "previous": hashlib.sha256(previous.body).hexdigest() if previous else None,
            "heads": heads_out,
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
        except AuditChainBroken:
            pass  # logged where it was found ("audit checkpoint refused: ..."), every interval
        except Exception:
            log.exception("audit %s failed", what)
