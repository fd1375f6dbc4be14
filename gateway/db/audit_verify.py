"""Verifying the audit chains against the records and the signed checkpoints.

Reads one consistent snapshot (``REPEATABLE READ``): the scope's checkpoints, the partition
registry and chain heads, then every record of each partition in range in ``chain_seq`` order
(a server-side cursor: constant memory). Stops at the first broken link. Problems:

* ``checkpoint_signature`` / ``checkpoint_link``: a checkpoint does not verify with a trusted
  key, or does not commit to its predecessor (a checkpoint was edited, removed or inserted);
* ``hash_mismatch``: a record's link does not match its content and the previous link (a
  record was edited, or rows were reordered);
* ``missing_record``: ``chain_seq`` jumps (records were deleted from the middle);
* ``unexpected_record``: a sequence number repeats (a record was inserted or duplicated);
* ``unsealed``: a record has no link;
* ``truncated``: fewer records than a checkpoint or the chain head recorded (the tail was deleted);
* ``checkpoint_mismatch``: the record a checkpoint signed has another hash now (the chain was
  recomputed after an edit);
* ``partition_missing``: a partition a checkpoint or chain head names is gone, and no signed
  checkpoint records retention dropping it;
* ``checkpoint_regression``: a checkpoint signs a shorter chain than the one before it, or
  leaves a partition out without recording a drop.

Partitions and their bounds come from PostgreSQL's catalog (``pg_inherits``), never from the
``audit_partitions`` registry: a row there proves nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from gateway.db.audit_chain import canonical_bytes, genesis, link
from gateway.db.audit_partitions import Partition, catalog_partitions
from gateway.db.audit_streams import STREAMS, Stream

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "chain_heads",
    "insert_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "verify_chains",
    "verify_partition",
]

CHECKPOINT_VERSION = "gw-audit-checkpoint/1"

SignatureCheck = Callable[[bytes, bytes, str], bool]
"""``(body, signature, key_id) -> bool``: True when a trusted key verifies the signature."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One stored checkpoint: ``body`` are the exact signed bytes (canonical JSON)."""

    id: int
    created_at: datetime
    body: bytes
    signature: bytes
    key_id: str

    def document(self) -> dict[str, Any]:
        """The parsed body."""
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed

    def describe(self) -> dict[str, Any]:
        """JSON shape (``GET /v1/audit/checkpoints``)."""
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "key_id": self.key_id,
            "body": self.body.decode(),
            "signature": self.signature.hex(),
        }


def _checkpoint(r: asyncpg.Record) -> Checkpoint:
    return Checkpoint(r["id"], r["created_at"], r["body"].encode(), bytes(r["signature"]), r["key_id"])


async def chain_heads(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str) -> list[dict[str, Any]]:
    """The scope's chain heads: ``{stream, partition, seq, hash (hex), record_key, record_ts,
    dropped_at (datetime|None)}``."""
    rows = await conn.fetch(
        "SELECT stream, partition, seq, hash, record_key, record_ts, dropped_at FROM audit_chain_heads"
        " WHERE tenant = $1 AND environment = $2 ORDER BY stream, partition",
        tenant,
        environment,
    )
    return [{**dict(r), "hash": bytes(r["hash"]).hex()} for r in rows]


async def latest_checkpoint(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str
) -> Checkpoint | None:
    """The scope's newest checkpoint, or None."""
    row = await conn.fetchrow(
        "SELECT id, created_at, body, signature, key_id FROM audit_checkpoints"
        " WHERE tenant = $1 AND environment = $2 ORDER BY id DESC LIMIT 1",
        tenant,
        environment,
    )
    return _checkpoint(row) if row else None


async def list_checkpoints(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str, limit: int
) -> list[Checkpoint]:
    """The scope's newest ``limit`` checkpoints, newest first."""
    rows = await conn.fetch(
        "SELECT id, created_at, body, signature, key_id FROM audit_checkpoints"
        " WHERE tenant = $1 AND environment = $2 ORDER BY id DESC LIMIT $3",
        tenant,
        environment,
        limit,
    )
    return [_checkpoint(r) for r in rows]


async def insert_checkpoint(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    created_at: datetime,
    body: bytes,
    signature: bytes,
    kid: str,
) -> int:
    """Store a signed checkpoint; return its id."""
    value: int = await conn.fetchval(
        "INSERT INTO audit_checkpoints (tenant, environment, created_at, body, signature, key_id)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        tenant,
        environment,
        created_at,
        body.decode(),
        signature,
        kid,
    )
    return value


class _Broken(Exception):
    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report


def _break(
    stream: str, partition: str | None, seq: int | None, problem: str, detail: str, record: Any = None
) -> _Broken:
    rid = None if record is None else str(record)
    return _Broken(
        {
            "stream": stream,
            "partition": partition,
            "seq": seq,
            "decision_id": rid if stream in ("decisions", "opa_logs") else None,
            "record_id": rid,
            "problem": problem,
            "detail": detail,
        }
    )


@dataclass
class _Signed:
    """What the checkpoints sign, gathered from all of them."""

    latest: Checkpoint | None = None
    hashes: dict[tuple[str, str], dict[int, str]] = field(default_factory=dict)
    """``(stream, partition) -> {seq: hash}`` of every head any checkpoint signed."""
    dropped: set[tuple[str, str]] = field(default_factory=set)
    """Partitions the newest checkpoint records as dropped by retention."""


async def _check_checkpoints(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    since: datetime | None,
    until: datetime | None,
    check: SignatureCheck,
) -> _Signed:
    """Walk every checkpoint oldest first (a cursor): scope, version, the link to the one
    before, the signature (the newest's and those made in the range), and that each extends
    the one before (a signed partition never vanishes outside a signed drop; its seq never
    decreases); gather the signed heads."""
    out = _Signed()
    previous: str | None = None
    before: dict[tuple[str, str], int] = {}
    last: Checkpoint | None = None
    newest_id = await conn.fetchval(
        "SELECT max(id) FROM audit_checkpoints WHERE tenant = $1 AND environment = $2", tenant, environment
    )
    async for r in conn.cursor(
        "SELECT id, created_at, body, signature, key_id FROM audit_checkpoints"
        " WHERE tenant = $1 AND environment = $2 ORDER BY id",
        tenant,
        environment,
        prefetch=100,
    ):
        cp = _checkpoint(r)
        try:
            doc = cp.document()
            heads = doc["heads"]
            dropped = {(d["stream"], d["partition"]) for d in doc["dropped"]}
        except (ValueError, KeyError, TypeError):
            raise _break("checkpoints", None, cp.id, "checkpoint_signature", "the body is not a checkpoint") from None
        if (doc.get("version"), doc.get("tenant"), doc.get("environment")) != (CHECKPOINT_VERSION, tenant, environment):
            raise _break("checkpoints", None, cp.id, "checkpoint_signature", "the body is for another scope or version")
        if doc.get("previous") != previous:
            raise _break("checkpoints", None, cp.id, "checkpoint_link", "does not commit to the checkpoint before it")
        previous = hashlib.sha256(cp.body).hexdigest()
        in_range = (since is None or cp.created_at >= since) and (until is None or cp.created_at < until)
        if (in_range or cp.id == newest_id) and not check(cp.body, cp.signature, cp.key_id):
            raise _break(
                "checkpoints", None, cp.id, "checkpoint_signature", f"does not verify with trusted key {cp.key_id!r}"
            )
        now_heads = {(h["stream"], h["partition"]): h["seq"] for h in heads}
        for key, seq in before.items():
            if key not in dropped and now_heads.get(key, -1) < seq:
                raise _break(
                    "checkpoints",
                    None,
                    cp.id,
                    "checkpoint_regression",
                    f"{key[0]}/{key[1]} was signed at seq {seq} and is shorter or gone here, without a signed drop",
                )
        for h in heads:
            out.hashes.setdefault((h["stream"], h["partition"]), {})[h["seq"]] = h["hash"]
        before, out.dropped, last = now_heads, dropped, cp
    out.latest = last
    return out


async def _walk(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    stream: Stream,
    partition: str,
    signed: dict[int, str],
    head: int,
) -> tuple[int, int]:
    """Check one partition's chain; return ``(records, records after the checkpoint)``."""
    columns = stream.stored_columns()
    sql = (
        f'SELECT chain_seq, chain_hash, {columns} FROM "{partition}"'
        " WHERE tenant = $1 AND environment = $2 ORDER BY chain_seq"
    )
    previous = genesis(tenant, environment, stream.name, partition)
    expected = 1
    async for r in conn.cursor(sql, tenant, environment, prefetch=5000):
        record = r[stream.record_id]
        seq = r["chain_seq"]
        if seq is None:
            raise _break(stream.name, partition, None, "unsealed", "a record has no chain link", record)
        if seq > expected:
            raise _break(
                stream.name,
                partition,
                expected,
                "missing_record",
                f"records {expected}..{seq - 1} are missing (deleted) before this one",
                record,
            )
        if seq < expected:
            raise _break(stream.name, partition, seq, "unexpected_record", "a sequence number repeats", record)
        values = tuple(r[f] for f in stream.fields)
        digest = link(previous, canonical_bytes(stream, seq, values))
        if bytes(r["chain_hash"]) != digest:
            raise _break(
                stream.name,
                partition,
                seq,
                "hash_mismatch",
                "the record's content or position does not match its link (edited or reordered)",
                record,
            )
        expected_hash = signed.get(seq)
        if expected_hash is not None:
            if digest.hex() != expected_hash:
                raise _break(
                    stream.name,
                    partition,
                    seq,
                    "checkpoint_mismatch",
                    "the chain was recomputed after the signed checkpoint (records were rewritten)",
                    record,
                )
        previous = digest
        expected += 1
    count = expected - 1
    top = max(signed, default=0)
    if top > count:
        raise _break(
            stream.name,
            partition,
            count + 1,
            "truncated",
            f"a signed checkpoint recorded {top} records; {count} remain (the tail was deleted)",
        )
    if head > count:
        raise _break(
            stream.name,
            partition,
            count + 1,
            "truncated",
            f"the chain head recorded {head} records; {count} remain (the tail was deleted)",
        )
    return count, count - top


async def verify_partition(
    conn: asyncpg.Connection, tenant: str, environment: str, stream_name: str, partition: str
) -> str | None:
    """Check the scope's whole chain in one partition (links, no gaps or repeats, as long as its
    head and the newest checkpoint say); None when intact, else the problem. Inside the
    caller's transaction (retention runs it right before dropping the partition)."""
    stream = {s.name: s for s in STREAMS}[stream_name]
    head = await conn.fetchval(
        "SELECT seq FROM audit_chain_heads WHERE tenant = $1 AND environment = $2 AND stream = $3 AND partition = $4",
        tenant,
        environment,
        stream_name,
        partition,
    )
    latest = await latest_checkpoint(conn, tenant, environment)
    signed = {
        h["seq"]: h["hash"]
        for h in (latest.document().get("heads", []) if latest else [])
        if (h["stream"], h["partition"]) == (stream_name, partition)
    }
    try:
        await _walk(conn, tenant, environment, stream, partition, signed, head or 0)
    except _Broken as broken:
        b = broken.report
        return f"{b['problem']} in {stream_name}/{partition} at seq {b['seq']}: {b['detail']}"
    return None


def _overlaps(p: Partition, since: datetime | None, until: datetime | None) -> bool:
    return (since is None or p.upper > since) and (until is None or p.lower < until)


async def verify_chains(
    pool: asyncpg.Pool,
    tenant: str,
    environment: str,
    *,
    since: datetime | None,
    until: datetime | None,
    check_signature: SignatureCheck,
) -> dict[str, Any]:
    """Verify the scope's chains in the partitions overlapping ``[since, until)`` (module docstring).

    Returns:
        ``{"intact", "message", "records", "streams": {name: n}, "partitions", "dropped_partitions",
        "unprotected_records", "checkpoint": {id, created_at, key_id}|None, "first_break": {...}|None}``.
    """
    counts = {s.name: 0 for s in STREAMS}
    walked = dropped_ok = unprotected = 0
    latest: Checkpoint | None = None
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        try:
            signed = await _check_checkpoints(conn, tenant, environment, since, until, check_signature)
            latest = signed.latest
            heads = {(h["stream"], h["partition"]): h for h in await chain_heads(conn, tenant, environment)}
            live = await catalog_partitions(conn)
            present = {(p.stream, p.name) for p in live}
            expected = (set(signed.hashes) | {k for k, h in heads.items() if h["seq"] > 0}) - signed.dropped
            for stream_name, name in sorted(expected - present):
                raise _break(
                    stream_name, name, None, "partition_missing", "its chain was recorded; no signed drop; it is gone"
                )
            dropped_ok = sum(1 for p in signed.dropped if p not in present)
            by_name = {s.name: s for s in STREAMS}
            for p in live:
                if not _overlaps(p, since, until):
                    continue
                key = (p.stream, p.name)
                head = heads.get(key)
                n, after = await _walk(
                    conn,
                    tenant,
                    environment,
                    by_name[p.stream],
                    p.name,
                    signed.hashes.get(key, {}),
                    head["seq"] if head is not None else 0,
                )
                counts[p.stream] += n
                walked += 1
                unprotected += after
        except _Broken as broken:
            b = broken.report
            where = f"{b['stream']}/{b['partition']}" if b["partition"] else b["stream"]
            at = f" at seq {b['seq']}" if b["seq"] is not None else ""
            rid = f" ({'decision ' + b['decision_id'] if b['decision_id'] else 'record ' + str(b['record_id'])})"
            return _report(
                counts,
                walked,
                dropped_ok,
                unprotected,
                latest,
                b,
                f"broken: {b['problem']} in {where}{at}{rid if b['record_id'] else ''}: {b['detail']}",
            )
    total = sum(counts.values())
    return _report(counts, walked, dropped_ok, unprotected, latest, None, f"intact, {total} records")


def _report(
    counts: dict[str, int],
    partitions: int,
    dropped: int,
    unprotected: int,
    latest: Checkpoint | None,
    first_break: dict[str, Any] | None,
    message: str,
) -> dict[str, Any]:
    return {
        "intact": first_break is None,
        "message": message,
        "records": sum(counts.values()),
        "streams": counts,
        "partitions": partitions,
        "dropped_partitions": dropped,
        "unprotected_records": unprotected,
        "checkpoint": (
            {"id": latest.id, "created_at": latest.created_at.isoformat(), "key_id": latest.key_id} if latest else None
        ),
        "first_break": first_break,
    }
