"""`make bench-audit`: the reviewers' trail at 10 million events (docs/audit.md).

Fills a throwaway database (``--database``, default ``gateway_audit_bench``, re-created each run
unless ``--reuse``) with ``--events`` synthetic runtime events spread over ``--days`` days (daily
partitions, ``INSERT ... SELECT generate_series`` in chunks, the query indexes of migration 0014
built after the fill), builds the hourly rollups of migration 0016 (the fill bypasses ingest,
which keeps them otherwise), ANALYZEs, then measures:

* every reviewer filter of ``GET /v1/audit/decisions`` (one page of 50, newest first), with
  values drawn from the data, without and with a 24 h range: p50/p95 in ms;
* every aggregate of ``GET /v1/audit/stats`` over the last 1 h, 24 h, 7, 30 and 93 days, without
  and with a server filter (both read the rollups): p50/p95, and how the percentiles were computed;
* the export: rows/s and MB/s of NDJSON encoded from the server-side cursor
  (:func:`gateway.db.audit_export.stream_decisions`, the route's code path minus HTTP);
* ingest: :func:`bench_ingest`, events/s on one connection through the real ingest path (chained,
  binary COPY in batches of 5,000) into the filled table, then the chain verification's records/s.

Distributions: 2,000 subjects (skewed: a few are busy), 50 clients, 20 servers x 10 tools, 85 % ok,
3 % tool_error, 8 % denied, 2 % rejected, 2 % error; 30 reasons; 6 data planes; 3 protocol
versions; policy revisions and projection versions advancing with time; latency 1-2000 ms
(skewed). The chain columns get placeholder values (the chain is not what is measured here).

    make bench-audit
    python deploy/bench/audit_bench.py --events 10000000 --days 30 --write docs/audit.md
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from gateway.config import PROJECT_ROOT, Secret
from gateway.db import apply_migrations, audit, audit_export, audit_rollups, audit_stats, create_pool
from gateway.db.audit import DecisionQuery
from gateway.db.audit_ingest import EVENT_FIELDS, insert_decision_events
from gateway.db.audit_partitions import PartitionMap
from gateway.db.audit_verify import verify_chains
from gateway.db.migrate import MIGRATIONS_DIR
from gateway.devtools.stack import fresh_database, with_database

T, E = "tenant_local", "prod"
DB_NAME = "gateway_audit_bench"
END = datetime(2026, 3, 31, tzinfo=UTC)
INDEX_FILE = MIGRATIONS_DIR / "0014_audit_query_indexes.sql"
MARK_BEGIN, MARK_END = "<!-- audit-bench:begin -->", "<!-- audit-bench:end -->"

_FILL = """
INSERT INTO audit_decisions (decision_id, tenant, environment, "timestamp", dataplane_id, subject, client_id, action,
    server, tool, allowed, reasons, policy_revision, projection_version, latency_ms, status, error_category,
    arguments_sha256, result_sha256, session_id, protocol_version, chain_seq, chain_hash)
SELECT 'd-' || i, $1, $2, ts, 'dp-' || (i % 6), 'user-' || subj, 'agent-' || (i % 50), 'tools/call',
    'srv-' || srv, 'tool-' || srv || '-' || (hashint % 10),
    k >= 15, -- k < 15: refused (denied/rejected/error are refused or failed)
    CASE WHEN k < 8 THEN jsonb_build_array('tool_not_granted', 'role_' || (hashint % 30) || '_lacks_scope')
         WHEN k < 10 THEN '["credential_not_connected"]'::jsonb
         WHEN k < 12 THEN '[]'::jsonb
         ELSE jsonb_build_array('granted_by_rule_' || (hashint % 30)) END,
    'rev-' || (extract(epoch FROM ts)::bigint / 129600), extract(epoch FROM ts)::bigint / 43200,
    round((1 + 2000 * power(random(), 6))::numeric, 3)::float8,
    CASE WHEN k < 8 THEN 'denied' WHEN k < 10 THEN 'rejected' WHEN k < 12 THEN 'error'
         WHEN k < 15 THEN 'tool_error' ELSE 'ok' END,
    CASE WHEN k < 8 THEN 'policy_denied' WHEN k < 10 THEN 'credential_not_connected'
         WHEN k < 12 THEN 'upstream_timeout' END,
    md5(i::text) || md5((i + 1)::text), md5((i + 2)::text) || md5((i + 3)::text), 's-' || (i / 20),
    CASE WHEN i % 10 = 0 THEN '2025-03-26' WHEN i % 10 < 4 THEN '2025-06-18' ELSE '2025-11-25' END,
    i, '\\x00'::bytea
FROM (
    SELECT i, $3::timestamptz + (i - 1) * $6::interval AS ts,
           (abs(hashint8(i)) % 100)::int AS k, abs(hashint8(i * 7)) AS hashint,
           floor(2000 * power(random(), 3))::int AS subj, (abs(hashint8(i * 13)) % 20)::int AS srv
    FROM generate_series($4::bigint, $5::bigint) AS i
) AS g
"""
# k: 0-7 denied (8 %), 8-9 rejected (2 %, allowed flag false here too: refused before the call),
# 10-11 error (2 %), 12-14 tool_error (3 %), 15-99 ok (85 %).
# Note: the outcome mapping is by status first, so rejected/error rows count as such.


def _index_names() -> list[str]:
    return re.findall(r"CREATE INDEX IF NOT EXISTS (\w+)", INDEX_FILE.read_text())


async def fill(pool: asyncpg.Pool, events: int, days: int) -> dict[str, float]:
    """Create the partitions, drop 0014's indexes, insert ``events`` rows, rebuild the indexes, ANALYZE."""
    start = END - timedelta(days=days)
    await PartitionMap().ensure_range(pool, start, END)
    timings: dict[str, float] = {}
    async with pool.acquire() as conn:
        await conn.execute("SET statement_timeout = 0")
        for name in _index_names():
            await conn.execute(f"DROP INDEX IF EXISTS {name}")
        step = timedelta(days=days) / events
        t0 = time.perf_counter()
        chunk = 500_000
        for lo in range(1, events + 1, chunk):
            hi = min(lo + chunk - 1, events)
            await conn.execute(_FILL, T, E, start, lo, hi, step, timeout=None)
            print(f"  filled {hi:,} rows ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        timings["fill_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute(INDEX_FILE.read_text(), timeout=None)
        timings["index_s"] = time.perf_counter() - t0
        print(f"  indexes built ({timings['index_s']:.0f} s)", file=sys.stderr, flush=True)
        timings["rollups_s"] = await build_rollups(conn, start)
        t0 = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) audit_decisions", timeout=None)
        timings["vacuum_analyze_s"] = time.perf_counter() - t0
    return timings


async def build_rollups(conn: asyncpg.Connection, start: datetime) -> float:
    """Rebuild the hourly rollups of ``[start, END)`` from the filled events (SQL
    ``audit_rollups_rebuild``), then ANALYZE them; returns the seconds taken."""
    t0 = time.perf_counter()
    events = await audit_rollups.rebuild(conn, T, E, start, END)
    for table in ("audit_rollup_outcomes", "audit_rollup_latency", "audit_rollup_denials", "audit_rollup_reasons"):
        await conn.execute(f"ANALYZE {table}", timeout=None)
    elapsed = time.perf_counter() - t0
    print(f"  rollups built in {elapsed:.0f} s ({events:,} events)", file=sys.stderr, flush=True)
    return elapsed


async def build_indexes(pool: asyncpg.Pool) -> dict[str, float]:
    """``--reuse``: create the indexes of 0014 a previous run did not finish, the rollups when
    there are none (migration 0016 backfills them when it is first applied), then ANALYZE."""
    async with pool.acquire() as conn:
        await conn.execute("SET statement_timeout = 0")
        await conn.execute("SET maintenance_work_mem = '512MB'")
        t0 = time.perf_counter()
        await conn.execute(INDEX_FILE.read_text(), timeout=None)
        index_s = time.perf_counter() - t0
        timings = {"index_s": index_s}
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM audit_rollup_outcomes WHERE tenant = $1)", T):
            oldest = await conn.fetchval('SELECT min("timestamp") FROM audit_decisions WHERE tenant = $1', T)
            timings["rollups_s"] = await build_rollups(conn, oldest or END)
        t0 = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) audit_decisions", timeout=None)
        timings["vacuum_analyze_s"] = time.perf_counter() - t0
        return timings


INGEST_EVENTS = 200_000
INGEST_BATCH = 5_000


def _ingest_rows(n: int, base: datetime) -> list[tuple[Any, ...]]:
    """``n`` runtime events as a data plane sends them (validated tuples), 1 ms apart."""
    rows = []
    for i in range(n):
        k = i % 100
        v: dict[str, Any] = dict.fromkeys(EVENT_FIELDS)
        v.update(
            decision_id=str(uuid.uuid4()),
            timestamp=base + timedelta(milliseconds=i),
            tenant=T,
            environment=E,
            dataplane_id=f"dp-{i % 6}",
            subject=f"user-{i % 2000}",
            client_id=f"agent-{i % 50}",
            action="tools/call",
            server=f"srv-{i % 20}",
            tool=f"tool-{i % 20}-{i % 10}",
            allowed=k >= 15,
            reasons=["tool_not_granted"] if k < 8 else [f"granted_by_rule_{i % 30}"],
            policy_revision="rev-1",
            projection_version=7,
            latency_ms=1.0 + (i % 997) / 10,
            status="denied" if k < 8 else "rejected" if k < 10 else "error" if k < 12 else "ok",
            arguments_sha256="a" * 64,
            result_sha256="b" * 64,
            protocol_version="2025-11-25",
        )
        rows.append(tuple(v[f] for f in EVENT_FIELDS))
    return rows


async def bench_ingest(pool: asyncpg.Pool, url: str) -> dict[str, Any] | None:
    """Ingest events/s on one connection, through the ingest path (chained, binary COPY in
    batches of 5,000, into the current partition of the filled table), then the chain
    verification's records/s over what was ingested."""
    base = datetime.now(UTC) - timedelta(hours=1)
    rows = _ingest_rows(INGEST_EVENTS + INGEST_BATCH, base)
    partitions = PartitionMap()
    async with create_pool(Secret(url), min_size=1, max_size=1) as one:
        await insert_decision_events(one, partitions, T, E, rows[:INGEST_BATCH])  # creates today's partition
        t0 = time.perf_counter()
        for lo in range(INGEST_BATCH, len(rows), INGEST_BATCH):
            await insert_decision_events(one, partitions, T, E, rows[lo : lo + INGEST_BATCH])
        ingest_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = await verify_chains(
            one, T, E, since=base, until=base + timedelta(hours=2), check_signature=lambda *_: True
        )
        verify_s = time.perf_counter() - t0
    assert report["intact"], report["message"]
    result = {
        "events": f"{INGEST_EVENTS:,}",
        "batch": f"{INGEST_BATCH:,}",
        "events/s": f"{INGEST_EVENTS / ingest_s:,.0f}",
        "verified records/s": f"{report['records'] / verify_s:,.0f}",
    }
    print(f"  ingest: {result}", file=sys.stderr, flush=True)
    return result


def _page(
    pool: asyncpg.Pool, make: Callable[[int], DecisionQuery], extra: dict[str, Any]
) -> Callable[[], Awaitable[Any]]:
    counter = iter(range(10**9))
    return lambda: audit.query_decisions(pool, T, E, dataclasses.replace(make(next(counter)), **extra))


async def _timed(fn: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        try:
            await fn()
        except asyncpg.QueryCanceledError:  # over the pool's statement timeout (15 s)
            samples.append(float("inf"))
            continue
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(round(0.95 * (len(samples) - 1))))]


async def _values(pool: asyncpg.Pool, column: str, n: int, since: datetime) -> list[Any]:
    rows = await pool.fetch(
        f'SELECT {column} AS v FROM audit_decisions TABLESAMPLE SYSTEM (0.1) WHERE "timestamp" >= $1'
        f" AND {column} IS NOT NULL LIMIT $2",
        since,
        n,
    )
    return [r["v"] for r in rows] or [None]


def _pick(column: str, choices: list[Any]) -> Callable[[int], DecisionQuery]:
    return lambda i: DecisionQuery(**{column: choices[i % len(choices)]})


async def measure_filters(pool: asyncpg.Pool, runs: int) -> list[tuple[str, float, float, float, float]]:
    """(filter, p50, p95 without range, p50, p95 with the last 24 h) in ms, one page of 50."""
    recent = END - timedelta(days=3)
    values = {c: await _values(pool, c, runs, recent) for c in (
        "subject", "client_id", "server", "tool", "status", "error_category", "policy_revision",
        "projection_version", "protocol_version", "dataplane_id",
    )}  # fmt: skip
    cases: dict[str, Callable[[int], DecisionQuery]] = {
        "(none)": lambda i: DecisionQuery(),
        **{c: _pick(c, values[c]) for c in values},
        "subject (absent value)": lambda i: DecisionQuery(subject=f"nobody-{i}"),
        "allowed=false": lambda i: DecisionQuery(allowed=False),
        "outcome=denied": lambda i: DecisionQuery(outcome="denied"),
        "subject + outcome=denied": lambda i: DecisionQuery(
            subject=values["subject"][i % len(values["subject"])], outcome="denied"
        ),
        "server + tool": lambda i: DecisionQuery(
            server=values["server"][i % len(values["server"])], tool=values["tool"][i % len(values["tool"])]
        ),
        "min_latency_ms=1500": lambda i: DecisionQuery(min_latency_ms=1500),
        "min_latency_ms=100": lambda i: DecisionQuery(min_latency_ms=100),
        "reason=credential": lambda i: DecisionQuery(reason="credential"),
        "reason=role_N_lacks": lambda i: DecisionQuery(reason=f"role_{i % 30}_lacks"),
        "q=lacks scope": lambda i: DecisionQuery(terms=("lacks", "scope")),
        "q=no-such-text": lambda i: DecisionQuery(terms=(f"nosuchtext{i}",)),
    }
    results = []
    day = {"since": END - timedelta(days=1), "until": END}
    for name, make in cases.items():
        plain = await _timed(_page(pool, make, {}), runs)
        ranged = await _timed(_page(pool, make, day), runs)
        results.append((name, *plain, *ranged))
        print(f"  {name}: {plain[0]:.1f}/{plain[1]:.1f} ms; 24 h {ranged[0]:.1f}/{ranged[1]:.1f} ms", file=sys.stderr)
    return results


STATS_RANGES = (
    ("1 h", timedelta(hours=1)),
    ("24 h", timedelta(days=1)),
    ("7 days", timedelta(days=7)),
    ("30 days", timedelta(days=30)),
    ("93 days", timedelta(days=93)),
)


async def measure_stats(pool: asyncpg.Pool, runs: int) -> list[tuple[str, float, float]]:
    """(range and percentile method, p50, p95) in ms of the whole ``decision_stats`` (the
    aggregates concurrently), over ranges ending at :data:`END` (whole hours: rollups)."""
    results = []
    for label, span in STATS_RANGES:
        for filt_name, q in (("", DecisionQuery()), (" + server", DecisionQuery(server="srv-3"))):

            def stats(span: timedelta = span, q: DecisionQuery = q) -> Awaitable[dict[str, Any]]:
                return audit_stats.decision_stats(pool, T, E, q, since=END - span, until=END)

            try:
                method = (await stats())["latency_method"]
            except asyncpg.QueryCanceledError:
                method = "timeout"
            p50, p95 = await _timed(stats, runs)
            results.append((f"{label}{filt_name} ({method} percentiles)", p50, p95))
            print(f"  stats {label}{filt_name}: {p50:.0f}/{p95:.0f} ms ({method})", file=sys.stderr)
    return results


async def measure_export(pool: asyncpg.Pool) -> dict[str, float]:
    """NDJSON export of the last 24 h (oldest first) from the cursor, encoded as the route does."""
    rows = size = 0
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        q = DecisionQuery(since=END - timedelta(days=1), until=END, order="asc")
        async for item in audit_export.stream_decisions(conn, T, E, q):
            size += len(orjson.dumps(item)) + 1
            rows += 1
    elapsed = time.perf_counter() - t0
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed, "mb_per_s": size / elapsed / 1e6}


def render(args: argparse.Namespace, total: int, fill_t: dict[str, float], filters: Any, stats: Any, export: Any,
           ingest: Any) -> str:  # fmt: skip
    """The Markdown section written into docs/audit.md."""
    lines = [
        MARK_BEGIN,
        f"Measured by `make bench-audit` (`python deploy/bench/audit_bench.py --events {args.events} "
        f"--days {args.days}`) on {platform.machine()}, {os.cpu_count()} CPUs, PostgreSQL "
        f"{args.server_version} (shared_buffers {args.shared_buffers}); {total:,} events over {args.days} daily "
        f"partitions; {args.runs} runs per line. Fill {fill_t.get('fill_s', 0):.0f} s, indexes "
        f"{fill_t.get('index_s', 0):.0f} s, rollups built in {fill_t.get('rollups_s', 0):.0f} s, VACUUM ANALYZE "
        f"{fill_t.get('vacuum_analyze_s', 0):.0f} s.",
        "",
        "| filter (page of 50, newest first) | p50 ms | p95 ms | p50 ms, last 24 h | p95 ms, last 24 h |",
        "|---|---:|---:|---:|---:|",
        *[f"| {n} | {a:.1f} | {b:.1f} | {c:.1f} | {d:.1f} |" for n, a, b, c, d in filters],
        "",
        "| stats (all five aggregates) | p50 ms | p95 ms |",
        "|---|---:|---:|",
        *[f"| {n} | {a:.0f} | {b:.0f} |" for n, a, b in stats],
        "",
        f"Export (NDJSON from the server-side cursor, last 24 h, {export['rows']:,} rows): "
        f"{export['rows_per_s']:,.0f} rows/s, {export['mb_per_s']:.1f} MB/s.",
    ]
    if ingest:
        lines += [
            "",
            "Ingest on one connection (the ingest path: linked, binary COPY, into the filled table): "
            + ", ".join(f"{k} {v}" for k, v in ingest.items())
            + ".",
        ]
    lines.append(MARK_END)
    return "\n".join(lines)


async def run(args: argparse.Namespace, url: str) -> str:
    async with create_pool(Secret(url), min_size=1, max_size=8) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            args.server_version = await conn.fetchval("SHOW server_version")
            args.shared_buffers = await conn.fetchval("SHOW shared_buffers")
        fill_t = await build_indexes(pool) if args.reuse else await fill(pool, args.events, args.days)
        total = await pool.fetchval("SELECT count(*) FROM audit_decisions")
        print(f"{total:,} events; measuring", file=sys.stderr)
        ingest = await bench_ingest(pool, url)
        filters = await measure_filters(pool, args.runs)
        stats = await measure_stats(pool, max(3, args.runs // 4))
        export = await measure_export(pool)
        print(f"  export: {export}", file=sys.stderr)
    return render(args, total, fill_t, filters, stats, export, ingest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=20, help="Runs per filter (stats: a quarter, at least 3).")
    parser.add_argument(
        "--reuse", action="store_true", help="Measure the database of the previous run (indexes completed first)."
    )
    parser.add_argument("--write", type=Path, help="Replace the marked section of this Markdown file.")
    parser.add_argument(
        "--database", default=DB_NAME, help=f"Name of the throwaway database (default {DB_NAME}; re-created)."
    )
    args = parser.parse_args()
    random.seed(7)
    admin_url = os.environ.get("DATABASE_URL")
    if not admin_url:
        print("DATABASE_URL is required (make bench-audit sets it)", file=sys.stderr)
        return 2
    url = with_database(admin_url, args.database) if args.reuse else fresh_database(admin_url, args.database)
    section = asyncio.run(run(args, url))
    print(section)
    if args.write:
        path = args.write if args.write.is_absolute() else PROJECT_ROOT / args.write
        text = path.read_text()
        if MARK_BEGIN in text:
            text = re.sub(re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), lambda _: section, text, flags=re.S)
        else:
            text += "\n" + section + "\n"
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
