"""The hourly rollups against a real PostgreSQL: events ingested in random batches (NULL and
empty servers, every outcome, duplicates sent again) give stats from the rollups equal to the
stats computed from the events (counts exactly, percentiles within the histogram's error);
the SQL rebuild gives the rollups ingest keeps; forget_before removes them."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gateway.db import audit_ingest, audit_rollups
from gateway.db.audit import DecisionQuery
from gateway.db.audit_partitions import PartitionMap
from gateway.db.audit_stats import decision_stats
from gateway.db.audit_streams import EVENT_FIELDS

pytestmark = [pytest.mark.anyio, pytest.mark.db]

T, E = "tenant_local", "prod"
START = datetime(2026, 3, 1, 21, 0, tzinfo=UTC)  # 6 hours across a daily partition boundary
HOURS = 6
TABLES = ("audit_rollup_outcomes", "audit_rollup_latency", "audit_rollup_denials", "audit_rollup_reasons")
REL_ERROR = math.sqrt(audit_rollups.HIST_RATIO) - 1  # a bucket's middle vs any value in it
ABS_ERROR = audit_rollups.HIST_MIN_MS / 2  # the first bucket [0, 0.1) ms read as 0.05 ms


def random_events(rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    """``n`` events over :data:`HOURS` hours: every outcome, NULL and empty server/tool/subject,
    latencies from 0 to seconds (some on bucket bounds, some missing), 0..3 reasons."""
    events = []
    for i in range(n):
        status = rng.choice(["ok", "ok", "ok", "tool_error", "denied", "denied", "rejected", "error", None])
        allowed = status in ("ok", "tool_error") or (status in ("rejected", "error", None) and rng.random() < 0.5)
        latency = rng.choice(
            [None, 0.0, 0.03, 0.1, 0.11, 1.0, round(math.exp(rng.gauss(3, 2)), 3), rng.uniform(0.5, 40.0)]
        )
        values: dict[str, Any] = dict.fromkeys(EVENT_FIELDS)
        values.update(
            decision_id=f"r{i:05}",
            timestamp=START + timedelta(seconds=rng.uniform(0, HOURS * 3600 - 1)),
            tenant=T,
            environment=E,
            subject=rng.choice([None, "alice", "bob", "carol", "dave"]),
            action="tools/call",
            server=rng.choice([None, "", "github", "github", "fs", "db"]),
            tool=rng.choice([None, "read", "write", "delete"]),
            allowed=allowed,
            reasons=rng.sample(["tool_not_granted", "role_lacks_scope", "budget", "granted"], rng.randint(0, 3)),
            latency_ms=latency,
            status=status,
        )
        events.append(tuple(values[f] for f in EVENT_FIELDS))
    return events


async def ingest_in_random_batches(pool: asyncpg.Pool, rng: random.Random, events: list[tuple[Any, ...]]) -> None:
    """Batches of 1..80 events in random order; some batches are sent twice, and some new
    batches carry events already stored (a sender replaying after a failure)."""
    partitions = PartitionMap()
    todo = events[:]
    rng.shuffle(todo)
    sent: list[list[tuple[Any, ...]]] = []
    while todo:
        size = rng.randint(1, 80)
        batch, todo = todo[:size], todo[size:]
        if sent and rng.random() < 0.3:
            batch = batch + rng.choice(sent)[: rng.randint(1, 5)]  # old events ride along
        await audit_ingest.insert_decision_events(pool, partitions, T, E, batch)
        sent.append(batch)
        if rng.random() < 0.2:
            assert await audit_ingest.insert_decision_events(pool, partitions, T, E, rng.choice(sent)) == 0


def assert_same_stats(fast: dict[str, Any], exact: dict[str, Any]) -> None:
    """Equal but for the percentiles, which must be within the histogram's error."""
    assert fast["latency_method"] == "histogram" and exact["latency_method"] == "exact"
    for key in exact:
        if key not in ("latency_by_server", "latency_method"):
            assert fast[key] == exact[key], key
    strip = [{k: v for k, v in s.items() if not k.startswith("p")} for s in exact["latency_by_server"]]
    assert [{"server": s["server"], "count": s["count"]} for s in fast["latency_by_server"]] == strip
    for f, x in zip(fast["latency_by_server"], exact["latency_by_server"], strict=True):
        for p in ("p50_ms", "p99_ms"):
            assert abs(f[p] - x[p]) <= REL_ERROR * x[p] + ABS_ERROR + 1e-9, (f, x)


async def rollup_rows(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    return {t: [tuple(r) for r in await pool.fetch(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4, 5, 6")] for t in TABLES}


RANGES = [
    (START, START + timedelta(hours=HOURS)),  # whole hours only
    (START + timedelta(minutes=17, seconds=3), START + timedelta(hours=4, minutes=41)),  # partial hours at both ends
    (START - timedelta(hours=2), START + timedelta(hours=2, microseconds=1)),
    (START + timedelta(minutes=59), START + timedelta(hours=2)),
]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_stats_from_rollups_equal_the_stats_from_the_events(pool: asyncpg.Pool, seed: int) -> None:
    rng = random.Random(seed)
    events = random_events(rng, 400)
    await ingest_in_random_batches(pool, rng, events)
    assert await pool.fetchval("SELECT count(*) FROM audit_decisions") == len(events)

    for since, until in RANGES:
        for server in (None, "github", "", "nowhere"):
            q = DecisionQuery(server=server)
            for top in (2, 10):
                kw: dict[str, Any] = {"since": since, "until": until, "top": top}
                exact = await decision_stats(pool, T, E, q, rollups=False, **kw)
                fast = await decision_stats(pool, T, E, q, exact_latency_max=0, **kw)
                if exact["latency_by_server"]:
                    assert_same_stats(fast, exact)
                else:
                    assert fast == exact
                # few events: the rollup path computes the percentiles exactly, so all is equal
                assert await decision_stats(pool, T, E, q, **kw) == exact
    whole = await decision_stats(pool, T, E, DecisionQuery(), since=RANGES[0][0], until=RANGES[0][1])
    assert whole["total"] == len(events) and len(whole["per_hour"]) == HOURS
    assert sum(s["count"] for s in whole["top_denied_subjects"]) == whole["outcomes"]["denied"]
    # another filter: the events are read (exact percentiles)
    other = await decision_stats(pool, T, E, DecisionQuery(subject="bob"), since=START, until=RANGES[0][1])
    assert other["latency_method"] == "exact" and other["total"] < len(events)


async def test_a_batch_sent_again_is_not_counted_again(pool: asyncpg.Pool) -> None:
    rng = random.Random(7)
    events = random_events(rng, 60)
    partitions = PartitionMap()
    assert await audit_ingest.insert_decision_events(pool, partitions, T, E, events[:40]) == 40
    before = await rollup_rows(pool)
    assert sum(r[-1] for r in before["audit_rollup_outcomes"]) == 40
    assert await audit_ingest.insert_decision_events(pool, partitions, T, E, events[:40]) == 0
    assert await rollup_rows(pool) == before
    # half old, half new: only the new ones are added
    assert await audit_ingest.insert_decision_events(pool, partitions, T, E, events[20:60]) == 20
    after = await rollup_rows(pool)
    assert sum(r[-1] for r in after["audit_rollup_outcomes"]) == 60
    assert sum(r[4] for r in after["audit_rollup_latency"]) == sum(e[EVENT_FIELDS.index("latency_ms")] is not None
                                                                   for e in events)  # fmt: skip


async def test_the_rebuild_gives_the_rollups_ingest_keeps(pool: asyncpg.Pool) -> None:
    rng = random.Random(11)
    events = random_events(rng, 300)
    await ingest_in_random_batches(pool, rng, events)
    kept = await rollup_rows(pool)
    assert all(kept[t] for t in TABLES)

    assert await audit_rollups.rebuild(pool, T, E, START, START + timedelta(hours=HOURS)) == len(events)
    assert await rollup_rows(pool) == kept
    # a range off the hour rebuilds the hours it touches; other scopes' rollups are left alone
    await pool.execute("UPDATE audit_rollup_outcomes SET n = n + 100")
    await pool.execute("INSERT INTO audit_rollup_outcomes VALUES ('other', 'prod', $1, NULL, 'allowed', 5)", START)
    await audit_rollups.rebuild(
        pool, T, E, START + timedelta(minutes=30), START + timedelta(hours=HOURS - 1, seconds=1)
    )
    rows = await rollup_rows(pool)
    assert [r for r in rows["audit_rollup_outcomes"] if r[0] == T] == kept["audit_rollup_outcomes"]
    assert [r for r in rows["audit_rollup_outcomes"] if r[0] == "other"] == [
        ("other", "prod", START, None, "allowed", 5)
    ]
    # from nothing: every scope, every hour
    for t in TABLES:
        await pool.execute(f"DELETE FROM {t}")
    await audit_rollups.rebuild(pool, T, E, START, START + timedelta(hours=HOURS))
    assert await rollup_rows(pool) == kept
    for t in TABLES:
        await pool.execute(f"DELETE FROM {t}")
    await audit_rollups.rebuild(pool, None, None, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    assert await rollup_rows(pool) == kept


async def test_the_histogram_bucket_is_the_same_in_python_and_sql(pool: asyncpg.Pool) -> None:
    rng = random.Random(5)
    values = [0.0, 0.05, 0.1, 0.11, 0.121, 1.0, 1e6, 1e300, 1e308] + [
        round(math.exp(rng.gauss(3, 3)), rng.randint(0, 6)) for _ in range(2000)
    ]
    sql = await pool.fetch("SELECT audit_latency_bucket(v) AS b FROM unnest($1::float8[]) AS v", values)
    assert [r["b"] for r in sql] == [audit_rollups.latency_bucket(v) for v in values]
    assert audit_rollups.latency_bucket(0.05) == 0 and audit_rollups.latency_bucket(1e308) == 199
    for v in values[:8] + values[9:]:
        b = audit_rollups.latency_bucket(v)
        if 0 < b < audit_rollups.HIST_BUCKETS - 1:
            assert abs(audit_rollups.bucket_value(b) - v) <= REL_ERROR * v + 1e-12


async def test_forget_before_removes_the_hours_before(pool: asyncpg.Pool) -> None:
    rng = random.Random(13)
    await ingest_in_random_batches(pool, rng, random_events(rng, 200))
    cut = START + timedelta(hours=3)
    kept = {t: [r for r in rows if r[2] >= cut] for t, rows in (await rollup_rows(pool)).items()}
    assert all(kept[t] for t in TABLES)
    assert await audit_rollups.forget_before(pool, "other", E, cut) == 0
    assert await audit_rollups.forget_before(pool, T, E, cut) > 0
    assert await rollup_rows(pool) == kept
    # what the rollups still hold equals the events of those hours
    later = {"since": cut, "until": START + timedelta(hours=HOURS)}
    exact = await decision_stats(pool, T, E, DecisionQuery(), rollups=False, **later)
    assert_same_stats(await decision_stats(pool, T, E, DecisionQuery(), exact_latency_max=0, **later), exact)
