"""Hash chains over the audit records (docs/audit-integrity.md has the exact bytes).

Each record carries ``chain_seq`` (1, 2, ... in insertion order) and ``chain_hash`` per
(tenant, environment, stream, partition)::

    genesis    = SHA-256(b"gw-audit/1\\n" + JSON([tenant, environment, stream, partition]))
    chain_hash = SHA-256(previous chain_hash (32 bytes, genesis for seq 1) + canonical record bytes)
    canonical  = JSON(["gw-audit/1", stream, chain_seq, value of each committed column ...])

JSON here is compact UTF-8 JSON as orjson writes it (no whitespace, only ``"``, ``\\`` and
control characters escaped); a timestamp is ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (UTC; the six
fractional digits only when the microseconds are not zero); a ``json`` column is its stored
text as a JSON string; ``null`` for NULL.

Appending takes a transaction-level advisory lock per (tenant, environment, stream), so the
links of concurrent writers (several control-plane processes) never interleave; ingest inserts
with ``COPY`` (binary) in the same transaction as the heads it advances.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from gateway.db.audit_partitions import Partition, PartitionMap
from gateway.db.audit_streams import STREAMS, Stream

__all__ = [
    "VERSION",
    "append",
    "canonical_bytes",
    "genesis",
    "link",
    "lock_key",
    "pg_safe",
    "seal_unchained",
]

Hook = Callable[[asyncpg.Connection, list[tuple[Any, ...]]], Any]
"""A callback run inside an append's transaction with the connection and the new rows."""

VERSION = "gw-audit/1"
"""The canonical form's version tag (first element of every canonical record)."""


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


def canonical_bytes(stream: Stream, seq: int, values: Sequence[Any]) -> bytes:
    """The canonical bytes of one record (module docstring).

    Args:
        values: The record's values in ``stream.fields`` order, as stored: datetimes in UTC,
            ``json`` columns as their stored text (str) or None.
    """
    return orjson.dumps([VERSION, stream.name, seq, *values], option=orjson.OPT_UTC_Z)


def genesis(tenant: str, environment: str, stream: str, partition: str) -> bytes:
    """The link before a chain's first record (binds the chain to its scope and partition)."""
    return hashlib.sha256(VERSION.encode() + b"\n" + orjson.dumps([tenant, environment, stream, partition])).digest()


def link(previous: bytes, record: bytes) -> bytes:
    """``SHA-256(previous + record)``: the 32-byte chain hash of a record."""
    return hashlib.sha256(previous + record).digest()


def lock_key(tenant: str, environment: str, stream: str) -> int:
    """Advisory lock key (signed 64-bit) serialising appends to one scope's stream."""
    digest = hashlib.sha256(orjson.dumps(["gw-audit-lock", tenant, environment, stream])).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _stored(row: Sequence[Any], ts_index: int) -> tuple[Any, ...]:
    """``row`` as it will be stored: NUL-free (orjson writes U+0000 as ``\\u0000``, so one
    serialisation finds them), its timestamp in UTC."""
    out = tuple(row)
    if b"\\u0000" in orjson.dumps(out):
        out = tuple(pg_safe(out))
    ts = out[ts_index]
    if isinstance(ts, datetime) and ts.tzinfo is not UTC:
        out = (*out[:ts_index], ts.astimezone(UTC), *out[ts_index + 1 :])
    return out


def _as_text(stream: Stream, row: Sequence[Any]) -> tuple[Any, ...]:
    """``row`` with its ``json`` values as the text the pool's codec stores (orjson's bytes)."""
    if not stream.json_fields:
        return tuple(row)
    return tuple(
        orjson.dumps(v).decode() if name in stream.json_fields and v is not None else v
        for name, v in zip(stream.fields, row, strict=True)
    )


Head = tuple[int, bytes, str | None, datetime | None]
"""A chain head: ``(seq, hash, key of the last record, its timestamp)`` (key None: empty chain)."""


async def _heads(
    conn: asyncpg.Connection, tenant: str, environment: str, stream: Stream, partitions: set[str]
) -> dict[str, Head]:
    rows = await conn.fetch(
        "SELECT partition, seq, hash, record_key, record_ts FROM audit_chain_heads"
        " WHERE tenant = $1 AND environment = $2 AND stream = $3 AND partition = ANY($4::text[])",
        tenant,
        environment,
        stream.name,
        sorted(partitions),
    )
    return {r["partition"]: (r["seq"], bytes(r["hash"]), r["record_key"], r["record_ts"]) for r in rows}


async def _save_heads(
    conn: asyncpg.Connection, tenant: str, environment: str, stream: Stream, heads: dict[str, Head]
) -> None:
    names = sorted(heads)
    await conn.execute(
        """
        INSERT INTO audit_chain_heads (tenant, environment, stream, partition, seq, hash, record_key, record_ts)
        SELECT $1, $2, $3, p, s, h, k, t
        FROM unnest($4::text[], $5::bigint[], $6::bytea[], $7::text[], $8::timestamptz[]) AS u(p, s, h, k, t)
        ON CONFLICT (tenant, environment, stream, partition) DO UPDATE
        SET seq = EXCLUDED.seq, hash = EXCLUDED.hash, record_key = EXCLUDED.record_key, record_ts = EXCLUDED.record_ts
        """,
        tenant,
        environment,
        stream.name,
        names,
        [heads[n][0] for n in names],
        [heads[n][1] for n in names],
        [heads[n][2] for n in names],
        [heads[n][3] for n in names],
    )


def _chain(
    tenant: str,
    environment: str,
    stream: Stream,
    rows: Sequence[tuple[Any, ...]],
    partitions: Sequence[Partition],
    heads: dict[str, Head],
    *,
    json_is_text: bool,
) -> list[tuple[Any, ...]]:
    """Link ``rows`` after ``heads``, advancing them; rows + (seq, hash). ``json_is_text``:
    the rows' ``json`` values are already the stored text (read back), else Python values."""
    linked = []
    key_index, ts_index = stream.fields.index(stream.key[0]), stream.fields.index("timestamp")
    for row, part in zip(rows, partitions, strict=True):
        head = heads.get(part.name)
        seq, previous = (head[0], head[1]) if head else (0, genesis(tenant, environment, stream.name, part.name))
        seq += 1
        digest = link(
            previous,
            canonical_bytes(stream, seq, row if json_is_text or not stream.json_fields else _as_text(stream, row)),
        )
        heads[part.name] = (seq, digest, str(row[key_index]), row[ts_index])
        linked.append((*row, seq, digest))
    return linked


async def append(
    pool: asyncpg.Pool,
    partitions: PartitionMap,
    stream: Stream,
    tenant: str,
    environment: str,
    rows: Sequence[Sequence[Any]],
    *,
    before_insert: Callable[[asyncpg.Connection, list[tuple[Any, ...]]], Any] | None = None,
    after_copy: Callable[[asyncpg.Connection, list[tuple[Any, ...]]], Any] | None = None,
    dedupe: bool = True,
) -> int:
    """Chain and insert records of one scope; records already stored (by ``stream.key``) are skipped.

    Rows whose partition retention has dropped are skipped too (they are past retention).
    Insertion order is ``rows`` order. One transaction: lock, read heads, ``COPY`` the linked
    records, advance heads; when the primary key finds a record stored already, that
    transaction is rolled back and a second one leaves the stored records out.

    Args:
        rows: Values in ``stream.fields`` order (timezone-aware datetimes; ``json`` columns as
            Python values, stored as orjson text).
        before_insert: Awaited inside the transaction with the connection and the new rows
            (stored form), before they are copied.
        after_copy: Awaited inside the transaction with the connection and the rows copied
            (stored form, without the link columns), after the copy (e.g. rollups).
        dedupe: Look for records already stored by ``stream.key`` (off for records whose key
            is fresh by construction, e.g. a sequence value).

    Returns:
        How many records were inserted.

    Raises:
        asyncpg.PostgresError: The insert failed; nothing was stored.
    """
    ts_index = stream.fields.index("timestamp")
    stored = [_stored(r, ts_index) for r in rows]
    key_index = stream.fields.index(stream.key[0])
    unique: dict[tuple[Any, datetime], tuple[Any, ...]] = {}
    for row in stored:
        unique.setdefault((row[key_index], row[ts_index]), row)
    candidates = list(unique.values())
    if not candidates:
        return 0
    placed = await partitions.resolve(pool, stream, [r[ts_index] for r in candidates])
    live = [(r, p) for r, p in zip(candidates, placed, strict=True) if p.dropped_at is None]
    if not live:
        return 0
    try:
        return await _insert(pool, stream, tenant, environment, live, (before_insert, after_copy), dedupe, key_index)
    except (asyncpg.UndefinedTableError, asyncpg.CheckViolationError):
        partitions.invalidate()  # a partition this process knew was dropped elsewhere: reload next time
        raise


async def _insert(
    pool: asyncpg.Pool,
    stream: Stream,
    tenant: str,
    environment: str,
    live: list[tuple[tuple[Any, ...], Partition]],
    hooks: tuple[Hook | None, Hook | None],
    dedupe: bool,
    key_index: int,
) -> int:
    async with pool.acquire() as conn:
        if dedupe:
            try:
                # Optimistic: a batch is almost always new; the primary key refuses it whole
                # when one of its records is stored already (a batch sent again), and then
                # the duplicates are looked up and left out.
                return await _link_and_copy(conn, stream, tenant, environment, live, hooks)
            except asyncpg.UniqueViolationError:
                pass
        return await _link_and_copy(
            conn, stream, tenant, environment, live, hooks, skip_stored=dedupe, key_index=key_index
        )


async def _link_and_copy(
    conn: asyncpg.Connection,
    stream: Stream,
    tenant: str,
    environment: str,
    live: list[tuple[tuple[Any, ...], Partition]],
    hooks: tuple[Hook | None, Hook | None],
    *,
    skip_stored: bool = False,
    key_index: int = 0,
) -> int:
    """One transaction: lock the scope's stream, (optionally) leave out stored records, link
    the rest after the heads, ``COPY`` them, advance the heads; return how many were copied."""
    ts_index = stream.fields.index("timestamp")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(tenant, environment, stream.name))
        fresh = live
        if skip_stored:
            existing = await conn.fetch(
                f"""
                SELECT k.id, k.ts FROM unnest($1::text[], $2::timestamptz[]) AS k(id, ts)
                WHERE EXISTS (SELECT 1 FROM {stream.table} t
                              WHERE t.{stream.key[0]}::text = k.id AND t."timestamp" = k.ts
                                AND t.tenant = $3 AND t.environment = $4)
                """,
                [str(r[key_index]) for r, _ in live],
                [r[ts_index] for r, _ in live],
                tenant,
                environment,
            )
            seen = {(r["id"], r["ts"]) for r in existing}
            fresh = [(r, p) for r, p in live if (str(r[key_index]), r[ts_index]) not in seen]
            if not fresh:
                return 0
        new_rows = [r for r, _ in fresh]
        before_insert, after_copy = hooks
        if before_insert is not None:
            await before_insert(conn, new_rows)
        heads = await _heads(conn, tenant, environment, stream, {p.name for _, p in fresh})
        linked = _chain(tenant, environment, stream, new_rows, [p for _, p in fresh], heads, json_is_text=False)
        await conn.copy_records_to_table(
            stream.table, records=linked, columns=[*stream.fields, "chain_seq", "chain_hash"]
        )
        await _save_heads(conn, tenant, environment, stream, heads)
        if after_copy is not None:
            await after_copy(conn, new_rows)
        return len(linked)


async def seal_unchained(pool: asyncpg.Pool, tenant: str, environment: str) -> int:
    """Link the scope's records that migration 0013 moved into the partitioned tables, once.

    Only when the migration left the scope a row in ``audit_seal_pending`` (deleted in the same
    transaction): any other unlinked record is a break for verification, never linked here.
    Linked in (timestamp, key) order after each partition's head; returns how many.
    """
    total = 0
    async with pool.acquire() as conn, conn.transaction():
        pending = await conn.fetchval(
            "DELETE FROM audit_seal_pending WHERE tenant = $1 AND environment = $2 RETURNING 1", tenant, environment
        )
        if not pending:
            return 0
        for stream in STREAMS:
            columns = stream.stored_columns()
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(tenant, environment, stream.name))
            rows = await conn.fetch(
                f"SELECT tableoid::regclass::text AS part, {columns} FROM {stream.table}"
                f" WHERE tenant = $1 AND environment = $2 AND chain_seq IS NULL"
                f' ORDER BY "timestamp", {stream.key[0]}',
                tenant,
                environment,
            )
            if not rows:
                continue
            parts = [Partition(stream.name, r["part"].strip('"'), r["timestamp"], r["timestamp"]) for r in rows]
            values = [tuple(r[f] for f in stream.fields) for r in rows]
            heads = await _heads(conn, tenant, environment, stream, {p.name for p in parts})
            linked = _chain(tenant, environment, stream, values, parts, heads, json_is_text=True)
            key_index = stream.fields.index(stream.key[0])
            ts_index = stream.fields.index("timestamp")
            await conn.execute(
                f"""
                UPDATE {stream.table} t SET chain_seq = u.s, chain_hash = u.h
                FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::bytea[]) AS u(k, ts, s, h)
                WHERE t.{stream.key[0]}::text = u.k AND t."timestamp" = u.ts
                """,
                [str(r[key_index]) for r in linked],
                [r[ts_index] for r in linked],
                [r[-2] for r in linked],
                [r[-1] for r in linked],
            )
            await _save_heads(conn, tenant, environment, stream, heads)
            total += len(linked)
    return total
