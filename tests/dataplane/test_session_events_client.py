"""The data plane's client of the session events feed (gateway.dataplane.session_events):
concurrent publishers, refused batches, the bounded mirror. The control plane is an
``httpx.MockTransport`` here (the real one is in tests/controlplane/test_session_events.py)."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import orjson
import pytest

import gateway.dataplane.session_events as module
from gateway.config import Config
from gateway.dataplane.session_events import SessionEvents

pytestmark = pytest.mark.anyio

CONFIG = Config.from_mapping(
    {
        "plane": "control",
        "database_url": "postgresql://unused",
        "control_plane": {"admin_token": "a", "url": "http://cp"},
    }
)


def _ref(i: int) -> str:
    return f"sr-{i:024x}"


class ControlPlane:
    """Answers POSTs in the order given by ``answers`` (then 204), each after ``delays``."""

    def __init__(self, answers: list[int], delays: list[float]) -> None:
        self.answers, self.delays = answers, delays
        self.stored: list[str] = []
        self.posts = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        n = self.posts
        self.posts += 1
        await anyio.sleep(self.delays[n] if n < len(self.delays) else 0)
        status = self.answers[n] if n < len(self.answers) else 204
        if status == 204:
            self.stored += [e["session_ref"] for e in orjson.loads(request.content)["events"]]
        return httpx.Response(status)


async def test_concurrent_deletes_are_all_stored_even_when_one_post_fails() -> None:
    cp = ControlPlane(answers=[204, 503], delays=[0.2])
    async with httpx.AsyncClient(transport=httpx.MockTransport(cp)) as http:
        events = SessionEvents(CONFIG, http)
        expires = int(time.time()) + 60
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(events.publish, _ref(i), "ended", None, expires)
                await anyio.sleep(0.01)  # in this order: the first post is in flight
        await events._flush()  # what run() does next
    assert sorted(cp.stored) == [_ref(0), _ref(1), _ref(2)]
    assert events._pending == []


async def test_a_refused_batch_is_dropped_and_does_not_hold_back_later_events() -> None:
    cp = ControlPlane(answers=[400], delays=[])
    async with httpx.AsyncClient(transport=httpx.MockTransport(cp)) as http:
        events = SessionEvents(CONFIG, http)
        assert await events.publish(_ref(1), "ended", None, int(time.time()) + 60) is True
        assert await events.publish(_ref(2), "ended", None, int(time.time()) + 60) is True
    assert cp.stored == [_ref(2)] and events._pending == []
    assert events.ended(_ref(1))  # this data plane still refuses that id


async def test_the_mirror_is_bounded_and_forgets_the_soonest_to_expire_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "MAX_MIRROR", 100)
    events = SessionEvents(CONFIG, httpx.AsyncClient())
    now = int(time.time())
    for i in range(150):
        events._remember(_ref(i), "ended", None, now + 1000 + i)
    assert len(events._known) == 100
    assert not events.ended(_ref(0)) and events.ended(_ref(149))
    events._remember(_ref(500), "log_level", "debug", now - 1)  # already expired
    events._prune()
    assert events.level(_ref(500)) is None and len(events._known) == 100


async def test_a_spool_that_cannot_be_written_keeps_the_event_queued_and_raises_nothing(tmp_path: Path) -> None:
    cp = ControlPlane(answers=[503], delays=[])
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the spool directory should be")
    async with httpx.AsyncClient(transport=httpx.MockTransport(cp)) as http:
        events = SessionEvents(CONFIG, http, spool=blocked / "dp.session-events.json")
        assert await events.publish(_ref(1), "ended", None, int(time.time()) + 60) is False
    assert [e["session_ref"] for e in events._pending] == [_ref(1)] and events.ended(_ref(1))
