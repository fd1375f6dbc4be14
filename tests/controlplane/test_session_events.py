"""The session events feed (``/v1/dataplane/session-events``) and the data planes' client of it
(gateway.dataplane.session_events), against a real control plane and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import gateway.db.session_events as db_events
from gateway.config import Config
from gateway.dataplane.session_events import SessionEvents
from tests.controlplane.helpers import ADMIN_TOKEN, OPA_TOKEN, asgi_controlplane, poll, served_controlplane

pytestmark = [pytest.mark.anyio, pytest.mark.db]

REF = "sr-" + "ab" * 12
OTHER = "sr-" + "cd" * 12


def _event(ref: str = REF, kind: str = "ended", value: str | None = None, ttl: int = 3600) -> dict[str, Any]:
    return {"session_ref": ref, "kind": kind, "value": value, "expires_at": int(time.time()) + ttl}


async def test_events_posted_by_one_data_plane_are_read_by_every_data_plane_in_order(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (_, internal, _):
        first = [_event(), _event(OTHER, "log_level", "debug")]
        r = await internal.post("/v1/dataplane/session-events", json={"dataplane_id": "dp-a", "events": first})
        assert r.status_code == 204
        r = await internal.post(
            "/v1/dataplane/session-events",
            json={"dataplane_id": "dp-b", "events": [_event(OTHER, "log_level", "error")]},
        )
        assert r.status_code == 204

        feed = (await internal.get("/v1/dataplane/session-events")).json()

    got = [(e["session_ref"], e["kind"], e["value"]) for e in feed["events"]]
    assert got == [(REF, "ended", None), (OTHER, "log_level", "debug"), (OTHER, "log_level", "error")]
    seqs = [e["seq"] for e in feed["events"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert feed["next"] == seqs[-1]


async def test_the_cursor_moves_to_the_last_event_read_and_pages(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (_, internal, _):
        events = [_event(f"sr-{i:024x}") for i in range(5)]
        await internal.post("/v1/dataplane/session-events", json={"dataplane_id": "dp-a", "events": events})
        first = (await internal.get("/v1/dataplane/session-events", params={"limit": 3})).json()
        rest = (await internal.get("/v1/dataplane/session-events", params={"after": first["next"]})).json()
        after = (await internal.get("/v1/dataplane/session-events", params={"after": rest["next"]})).json()
    refs = [e["session_ref"] for e in first["events"] + rest["events"]]
    assert refs == [e["session_ref"] for e in events]  # in the order posted, each once
    assert first["next"] == first["events"][-1]["seq"] and after == {"events": [], "next": rest["next"]}


async def test_a_slow_commit_never_hides_an_event_behind_the_cursor(cp_config: Config) -> None:
    """Inserts are serialised (advisory lock): while one writer's event is uncommitted, a second
    writer waits instead of committing a larger seq a reader could move its cursor past."""
    async with asgi_controlplane(cp_config) as (_, internal, state):
        pool = state["cp_pool"]
        posted: list[int] = []

        async def post_other() -> None:
            body = {"dataplane_id": "dp-b", "events": [_event(OTHER)]}
            posted.append((await internal.post("/v1/dataplane/session-events", json=body)).status_code)

        async def second_writer_waits() -> bool:
            sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            return bool(await pool.fetchval(sql))

        async with anyio.create_task_group() as tg:
            async with pool.acquire() as slow:
                tx = slow.transaction()
                await tx.start()
                await slow.execute("SELECT pg_advisory_xact_lock($1)", db_events._LOCK_KEY)
                await slow.execute(
                    "INSERT INTO session_events (tenant, environment, session_ref, kind, value, dataplane_id,"
                    " expires_at) VALUES ($1, $2, $3, 'ended', NULL, 'dp-a', now() + interval '1 hour')",
                    cp_config.tenant,
                    cp_config.environment,
                    REF,
                )
                tg.start_soon(post_other)
                await poll(second_writer_waits, timeout=10, interval=0.02)
                early = (await internal.get("/v1/dataplane/session-events")).json()
                await tx.commit()
        late = (await internal.get("/v1/dataplane/session-events", params={"after": early["next"]})).json()
    assert posted == [204]
    assert early == {"events": [], "next": 0}
    assert [e["session_ref"] for e in late["events"]] == [REF, OTHER]


async def test_expired_events_are_neither_served_nor_kept(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (_, internal, state):
        await internal.post(
            "/v1/dataplane/session-events", json={"dataplane_id": "dp-a", "events": [_event(ttl=1), _event(OTHER)]}
        )
        await state["cp_pool"].execute(
            "UPDATE session_events SET expires_at = now() - interval '1 second' WHERE session_ref = $1", REF
        )
        feed = (await internal.get("/v1/dataplane/session-events")).json()
        assert [e["session_ref"] for e in feed["events"]] == [OTHER]
        await internal.post("/v1/dataplane/session-events", json={"dataplane_id": "dp-a", "events": [_event(OTHER)]})
        left = await state["cp_pool"].fetchval("SELECT count(*) FROM session_events WHERE session_ref = $1", REF)
        assert left == 0


MALFORMED: list[tuple[Any, str]] = [
    ([], "body must be an object"),
    ({"dataplane_id": "dp a", "events": [_event()]}, "dataplane_id"),
    ({"dataplane_id": "dp", "events": []}, "events must be an array of 1"),
    ({"dataplane_id": "dp", "events": [_event()] * 1001}, "events must be an array"),
    ({"dataplane_id": "dp", "events": [_event(ref="s-1")]}, "events[0].session_ref"),
    ({"dataplane_id": "dp", "events": [_event(kind="gone")]}, "events[0].kind"),
    ({"dataplane_id": "dp", "events": [_event(value="x")]}, "events[0].value"),
    ({"dataplane_id": "dp", "events": [_event(), _event(kind="log_level", value="loud")]}, "events[1].value"),
    ({"dataplane_id": "dp", "events": [{**_event(), "expires_at": "soon"}]}, "events[0].expires_at"),
    ({"dataplane_id": "dp", "events": [{**_event(), "expires_at": 10**20}]}, "events[0].expires_at"),
    ({"dataplane_id": "dp", "events": [{**_event(), "id": "raw"}]}, "events[0] must be"),
]


async def test_malformed_posts_get_400_naming_the_field_and_store_nothing(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (_, internal, state):
        answers = []
        for body, _ in MALFORMED:
            r = await internal.post("/v1/dataplane/session-events", json=body)
            answers.append((r.status_code, r.json().get("message", "")))
        stored = await state["cp_pool"].fetchval("SELECT count(*) FROM session_events")
    assert [(status, names in message) for (status, message), (_, names) in zip(answers, MALFORMED, strict=True)] == [
        (400, True)
    ] * len(MALFORMED), answers
    assert stored == 0


async def test_only_the_internal_token_opens_the_feed(cp_config: Config) -> None:
    statuses = []
    async with asgi_controlplane(cp_config) as (admin, _, _):
        for token in (None, ADMIN_TOKEN, OPA_TOKEN):
            headers = {"Authorization": f"Bearer {token}" if token else ""}
            get = await admin.get("/v1/dataplane/session-events", headers=headers)
            post = await admin.post(
                "/v1/dataplane/session-events", json={"dataplane_id": "dp", "events": [_event()]}, headers=headers
            )
            statuses.append((get.status_code, post.status_code))
    assert statuses == [(401, 401)] * 3


async def test_a_delete_on_one_data_plane_reaches_another_data_planes_client(cp_config: Config) -> None:
    async with served_controlplane(cp_config) as url, httpx.AsyncClient() as http:
        dp_config = Config.from_mapping(
            {
                "plane": "control",
                "database_url": "postgresql://unused",
                "control_plane": {"admin_token": ADMIN_TOKEN, "internal_token": "internal-test-token", "url": url},
            }
        )
        applied: list[tuple[str, str, str | None]] = []
        a = SessionEvents(dp_config, http)
        b = SessionEvents(dp_config, http)

        assert await a.publish(REF, "ended", None, int(time.time()) + 60) is True
        assert await a.publish(OTHER, "log_level", "warning", int(time.time()) + 60) is True
        assert a.ended(REF) and a.level(OTHER) == "warning"  # known to the publisher at once

        await b.poll(lambda *e: applied.append(e))

    assert applied == [(REF, "ended", None), (OTHER, "log_level", "warning")]
    assert b.ended(REF) and not b.ended(OTHER) and b.level(OTHER) == "warning"
    assert b.synced.is_set()


async def test_events_taken_while_the_control_plane_is_down_are_posted_when_it_is_back(cp_config: Config) -> None:
    async with httpx.AsyncClient() as http:
        down = Config.from_mapping(
            {
                "plane": "control",
                "database_url": "postgresql://unused",
                "control_plane": {"admin_token": ADMIN_TOKEN, "url": "http://127.0.0.1:9"},
            }
        )
        events = SessionEvents(down, http, post_timeout=1.0)
        assert await events.publish(REF, "ended", None, int(time.time()) + 60) is False
        assert events.ended(REF)  # this data plane refuses the id at once all the same

        async with served_controlplane(cp_config) as url:
            events._config = Config.from_mapping(  # the control plane is back (at this address)
                {
                    "plane": "control",
                    "database_url": "postgresql://unused",
                    "control_plane": {"admin_token": ADMIN_TOKEN, "internal_token": "internal-test-token", "url": url},
                }
            )
            assert await events._flush() is True
            reader = SessionEvents(events._config, http)

            async def seen() -> bool:
                await reader.poll(lambda *e: None)
                return reader.ended(REF)

            assert await poll(seen, timeout=10)


async def test_a_delete_taken_while_the_control_plane_is_down_survives_a_restart_of_the_data_plane(
    cp_config: Config, tmp_path: Path
) -> None:
    spool = tmp_path / "dp-a.session-events.json"
    down = Config.from_mapping(
        {
            "plane": "control",
            "database_url": "postgresql://unused",
            "control_plane": {"admin_token": ADMIN_TOKEN, "url": "http://127.0.0.1:9"},
        }
    )
    async with httpx.AsyncClient() as http:
        before = SessionEvents(down, http, post_timeout=1.0, spool=spool)
        assert await before.publish(REF, "ended", None, int(time.time()) + 60) is False
        assert spool.exists()  # on disk before the DELETE was answered

        async with served_controlplane(cp_config) as url:
            up = Config.from_mapping(
                {
                    "plane": "control",
                    "database_url": "postgresql://unused",
                    "control_plane": {"admin_token": ADMIN_TOKEN, "internal_token": "internal-test-token", "url": url},
                }
            )
            after = SessionEvents(up, http, spool=spool)  # the restarted data plane
            assert await after.load() == 1 and after.ended(REF)  # refused at once, before any post
            assert await after._flush() is True
            assert not spool.exists()
            reader = SessionEvents(up, http)
            await reader.poll(lambda *e: None)
            assert reader.ended(REF)
