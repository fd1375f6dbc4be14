"""Sealed session ids (gateway.dataplane.session_seal) and resumption by another data plane's
session table (gateway.dataplane.sessions)."""

from __future__ import annotations

import base64
import os
import time

import pytest

from gateway.dataplane.session_seal import MAX_CAPABILITIES_BYTES, PREFIX, SessionSeal, session_ref
from gateway.dataplane.sessions import SessionLimitReached, SessionsNotSynced, SessionStore

ALICE = ("https://idp.test.invalid", "alice")
BOB = ("https://idp.test.invalid", "bob")
KEY = bytes(range(32))
SCOPE = ("tenant_a", "prod")
VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
CAPS = {"sampling": {}, "elicitation": {"form": {}}, "roots": {"listChanged": True}}


def _seal(key: bytes = KEY, scope: tuple[str, str] = SCOPE, max_age: float = 3600) -> SessionSeal:
    return SessionSeal(key, scope, max_age=max_age, versions=VERSIONS)


def test_an_id_opens_for_its_subject_with_what_was_sealed() -> None:
    sid = _seal().seal(ALICE, "2025-11-25", CAPS)

    opened = _seal().open(sid, ALICE)

    assert opened is not None
    assert (opened.protocol_version, opened.capabilities) == ("2025-11-25", CAPS)
    assert abs(opened.began - time.time()) < 5
    assert sid.startswith(PREFIX) and all(0x21 <= ord(c) <= 0x7E for c in sid)
    assert len(sid) < 260


def test_ids_are_unique_and_never_show_the_capabilities() -> None:
    seal = _seal()
    ids = {seal.seal(ALICE, "2025-11-25", CAPS) for _ in range(200)}
    assert len(ids) == 200
    assert not any("listChanged" in base64.urlsafe_b64decode(i[3:] + "==").decode("latin-1") for i in ids)


@pytest.mark.parametrize(
    ("opener", "owner"),
    [
        pytest.param(_seal(), BOB, id="another-subject"),
        pytest.param(_seal(), ("https://other.invalid", "alice"), id="same-sub-another-issuer"),
        pytest.param(_seal(scope=("tenant_a", "staging")), ALICE, id="another-environment"),
        pytest.param(_seal(scope=("tenant_b", "prod")), ALICE, id="another-tenant"),
        pytest.param(_seal(key=bytes(32)), ALICE, id="another-key"),
    ],
)
def test_an_id_does_not_open_for_anyone_else(opener: SessionSeal, owner: tuple[str, str]) -> None:
    sid = _seal().seal(ALICE, "2025-11-25", CAPS)
    assert opener.open(sid, owner) is None


def test_a_tampered_or_respelled_id_does_not_open() -> None:
    sid = _seal().seal(ALICE, "2025-11-25", CAPS)
    raw = bytearray(base64.urlsafe_b64decode(sid[3:] + "=" * (-len(sid[3:]) % 4)))
    raw[20] ^= 1
    flipped = PREFIX + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()

    for bad in (flipped, sid + "=", sid + "!", sid[:-1], "s2." + sid[3:], PREFIX, PREFIX + "AAAA", "x" * 9000):
        assert _seal().open(bad, ALICE) is None, bad


def test_an_id_stops_opening_at_its_max_age() -> None:
    seal = _seal(max_age=60)
    assert seal.open(seal.seal(ALICE, "2025-11-25", CAPS, began=int(time.time()) - 59), ALICE) is not None
    assert seal.open(seal.seal(ALICE, "2025-11-25", CAPS, began=int(time.time()) - 61), ALICE) is None


def test_an_id_naming_a_revision_the_gateway_no_longer_takes_does_not_open() -> None:
    sid = SessionSeal(KEY, SCOPE, max_age=60, versions=("2024-11-05",)).seal(ALICE, "2024-11-05", {})
    assert _seal().open(sid, ALICE) is None


def test_large_capabilities_keep_their_standard_members_only() -> None:
    caps = {**CAPS, "experimental": {"blob": "x" * MAX_CAPABILITIES_BYTES}}
    sid = _seal().seal(ALICE, "2025-11-25", caps)
    opened = _seal().open(sid, ALICE)
    assert opened is not None and opened.capabilities == CAPS
    assert len(sid) < 400


def test_a_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SessionSeal(os.urandom(16), SCOPE, max_age=1, versions=VERSIONS)


# -- resumption by another data plane's table -------------------------------------------


def _store(*, ended: set[str] | None = None, levels: dict[str, str] | None = None, **kw: int) -> SessionStore:
    gone = ended if ended is not None else set()
    lv = levels if levels is not None else {}
    return SessionStore(
        idle_timeout=kw.get("idle", 60),
        max_sessions=kw.get("max_sessions", 100),
        seal=_seal(),
        ended=gone.__contains__,
        level=lv.get,
    )


def test_another_data_plane_resumes_a_session_from_its_id() -> None:
    first = _store()
    session = first.create(ALICE, "2025-06-18", CAPS)

    resumed = _store(levels={session.ref: "debug"}).get(session.id, ALICE)

    assert resumed is not None and resumed.resumed and not session.resumed
    assert (resumed.id, resumed.ref, resumed.protocol_version) == (session.id, session.ref, "2025-06-18")
    assert resumed.capabilities == CAPS and resumed.log_level == "debug"
    assert resumed.expires_at == session.expires_at and resumed.sealed


def test_another_subject_cannot_resume_it() -> None:
    session = _store().create(ALICE, "2025-11-25", CAPS)
    other = _store()
    assert other.get(session.id, BOB) is None
    assert len(other) == 0


def test_an_ended_session_does_not_resume_and_ends_where_it_is_held() -> None:
    ended: set[str] = set()
    first, second = _store(ended=ended), _store(ended=ended)
    session = first.create(ALICE, "2025-11-25", CAPS)
    assert second.get(session.id, ALICE) is not None

    assert first.delete(session.id, ALICE) is session
    ended.add(session.ref)  # the session events feed, as read by every data plane
    assert second.end(session.ref) is True

    assert second.get(session.id, ALICE) is None
    assert first.get(session.id, ALICE) is None


def test_a_session_forgotten_when_idle_resumes_on_its_next_request() -> None:
    store = _store(idle=0)
    session = store.create(ALICE, "2025-11-25", CAPS)
    time.sleep(0.01)  # > idle 0 s: the local state is gone

    again = store.get(session.id, ALICE)

    assert again is not None and again is not session and again.resumed


def test_unsealed_ids_live_on_one_data_plane_only() -> None:
    session = _store().create(ALICE, "2024-11-05", {}, resumable=False)
    assert not session.id.startswith(PREFIX) and not session.sealed
    assert _store().get(session.id, ALICE) is None


def test_resuming_into_a_full_table_is_refused_not_evicting() -> None:
    session = _store().create(ALICE, "2025-11-25", CAPS)
    full = _store(max_sessions=1)
    held = full.create(BOB, "2025-11-25", {})
    with pytest.raises(SessionLimitReached):
        full.get(session.id, ALICE)
    assert full.get(held.id, BOB) is held


def test_refs_name_sessions_without_being_their_ids() -> None:
    session = _store().create(ALICE, "2025-11-25", CAPS)
    assert session.ref == session_ref(session.id) and session.ref.startswith("sr-") and len(session.ref) == 27
    assert session.id not in session.ref


def test_before_the_feed_was_read_a_foreign_id_is_refused_for_now_not_resumed() -> None:
    session = _store().create(ALICE, "2025-11-25", CAPS)
    synced = [False]
    fresh = SessionStore(idle_timeout=60, max_sessions=10, seal=_seal(), synced=lambda: synced[0])
    with pytest.raises(SessionsNotSynced):
        fresh.get(session.id, ALICE)
    synced[0] = True
    assert fresh.get(session.id, ALICE) is not None


def test_a_held_session_ends_at_its_max_age_on_the_data_plane_that_holds_it() -> None:
    store = _store()
    session = store.create(ALICE, "2025-11-25", CAPS)
    session.expires_at = int(time.time()) - 1  # as if initialize was max_age ago
    assert store.get(session.id, ALICE) is None
    assert len(store) == 0 and store.find(session.ref) is None


def test_events_from_the_feed_end_a_held_session_or_set_its_level() -> None:
    store = _store()
    kept, ended = store.create(ALICE, "2025-11-25", CAPS), store.create(BOB, "2025-11-25", CAPS)

    store.apply_event(kept.ref, "log_level", "warning")
    store.apply_event(ended.ref, "ended", None)
    store.apply_event("sr-" + "0" * 24, "ended", None)  # not held here: nothing to do

    assert store.find(kept.ref) is kept and kept.log_level == "warning"
    assert store.find(ended.ref) is None and len(store) == 1
