"""Tests for gateway.dataplane.sessions: owner-bound, idle-expiring, bounded sessions."""

from __future__ import annotations

import types

import pytest

import gateway.dataplane.sessions as sessions_module
from gateway.dataplane.sessions import SessionLimitReached, SessionStore

ALICE = ("https://idp.test.invalid", "alice")
BOB = ("https://idp.test.invalid", "bob")
VERSION = "2025-11-25"


class FakeClock:
    """Stands in for the ``time`` module inside gateway.dataplane.sessions."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(sessions_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def _store(idle: float = 60.0, max_sessions: int = 100, max_per_owner: int = 64) -> SessionStore:
    return SessionStore(idle_timeout=idle, max_sessions=max_sessions, max_per_owner=max_per_owner)


def test_created_sessions_have_unique_long_ids(clock: FakeClock) -> None:
    store = _store(max_sessions=1000)
    ids = {store.create(ALICE, VERSION).id for _ in range(500)}

    assert len(ids) == 500
    assert all(len(i) >= 43 for i in ids)  # 32 random bytes, base64url


def test_ids_are_visible_ascii_as_mcp_requires(clock: FakeClock) -> None:
    session_id = _store().create(ALICE, VERSION).id

    assert all(0x21 <= ord(c) <= 0x7E for c in session_id)


def test_get_returns_the_owners_session(clock: FakeClock) -> None:
    store = _store()
    session = store.create(ALICE, VERSION)

    found = store.get(session.id, ALICE)

    assert found is session
    assert (found.owner, found.protocol_version) == (ALICE, VERSION)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(BOB, id="other-sub"),
        pytest.param(("https://other-idp.invalid", "alice"), id="other-issuer"),
        pytest.param(("https://idp.test.invalid", "Alice"), id="case-differs"),
    ],
)
def test_another_owners_session_id_is_unknown(clock: FakeClock, other: tuple[str, str]) -> None:
    store = _store()
    session = store.create(ALICE, VERSION)

    assert store.get(session.id, other) is None
    assert store.get(session.id, ALICE) is session  # still alive for its owner


def test_owners_with_non_ascii_names_are_compared(clock: FakeClock) -> None:
    store = _store()
    owner = ("https://idp.test.invalid", "josé")
    session = store.create(owner, VERSION)

    assert store.get(session.id, owner) is session
    assert store.get(session.id, ("https://idp.test.invalid", "jose")) is None
    assert store.get(session.id, ALICE) is None


def test_an_unknown_id_is_none(clock: FakeClock) -> None:
    assert _store().get("no-such-session", ALICE) is None


def test_a_session_expires_after_the_idle_timeout(clock: FakeClock) -> None:
    store = _store(idle=60.0)
    session = store.create(ALICE, VERSION)

    clock.now += 60.5

    assert store.get(session.id, ALICE) is None
    clock.now -= 60.5  # even back in time: expiry removed it
    assert store.get(session.id, ALICE) is None


def test_a_session_is_alive_at_exactly_the_idle_timeout(clock: FakeClock) -> None:
    store = _store(idle=60.0)
    session = store.create(ALICE, VERSION)

    clock.now += 60.0

    assert store.get(session.id, ALICE) is session


def test_use_refreshes_the_idle_timer(clock: FakeClock) -> None:
    store = _store(idle=60.0)
    session = store.create(ALICE, VERSION)

    for _ in range(5):
        clock.now += 50.0
        assert store.get(session.id, ALICE) is session


def test_another_owners_attempt_does_not_refresh_the_idle_timer(clock: FakeClock) -> None:
    store = _store(idle=60.0)
    session = store.create(ALICE, VERSION)

    clock.now += 50.0
    assert store.get(session.id, BOB) is None
    clock.now += 50.0

    assert store.get(session.id, ALICE) is None


def test_a_subject_over_its_share_loses_its_own_oldest_sessions(clock: FakeClock) -> None:
    store = _store(max_per_owner=3)
    created = []
    for _ in range(5):
        created.append(store.create(ALICE, VERSION))
        clock.now += 1

    assert [store.get(s.id, ALICE) for s in created[:2]] == [None, None]
    assert [store.get(s.id, ALICE) for s in created[2:]] == created[2:]


def test_eviction_spares_recently_used_sessions(clock: FakeClock) -> None:
    store = _store(max_per_owner=2)
    first = store.create(ALICE, VERSION)
    second = store.create(ALICE, VERSION)
    assert store.get(first.id, ALICE) is first  # first is now the most recently used

    third = store.create(ALICE, VERSION)

    assert store.get(second.id, ALICE) is None
    assert store.get(first.id, ALICE) is first
    assert store.get(third.id, ALICE) is third


def test_a_full_store_refuses_new_sessions_instead_of_evicting_other_subjects(clock: FakeClock) -> None:
    store = _store(max_sessions=2)
    bobs = store.create(BOB, VERSION)
    store.create(ALICE, VERSION)

    with pytest.raises(SessionLimitReached):
        store.create(ALICE, VERSION)
    assert store.get(bobs.id, BOB) is bobs


def test_a_full_store_makes_room_by_expiring_idle_sessions(clock: FakeClock) -> None:
    store = _store(idle=10, max_sessions=2)
    old = [store.create(BOB, VERSION), store.create(BOB, VERSION)]
    clock.now += 11

    fresh = store.create(ALICE, VERSION)

    assert store.get(fresh.id, ALICE) is fresh
    assert [store.get(s.id, BOB) for s in old] == [None, None]


def test_delete_ends_the_owners_session(clock: FakeClock) -> None:
    store = _store()
    session = store.create(ALICE, VERSION)

    assert store.delete(session.id, ALICE) is session
    assert store.get(session.id, ALICE) is None
    assert store.delete(session.id, ALICE) is None


def test_delete_refuses_another_owners_session(clock: FakeClock) -> None:
    store = _store()
    session = store.create(ALICE, VERSION)

    assert store.delete(session.id, BOB) is None
    assert store.get(session.id, ALICE) is session


def test_delete_of_an_unknown_or_expired_session_is_false(clock: FakeClock) -> None:
    store = _store(idle=10.0)
    session = store.create(ALICE, VERSION)
    clock.now += 11

    assert store.delete("unknown", ALICE) is None
    assert store.delete(session.id, ALICE) is None
