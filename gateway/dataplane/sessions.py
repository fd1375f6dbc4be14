"""Client-facing legacy MCP sessions (``Mcp-Session-Id``, MCP 2025-03-26..2025-11-25).

Session ids are bound to the authenticated subject (``issuer`` + ``sub``): a request
presenting another subject's session id is answered 404 exactly like an unknown id (MCP
security best practices, "Session Hijacking"). With a :class:`~gateway.dataplane.session_seal.SessionSeal`
(every data plane of a deployment has one), a streamable-HTTP session's id is *sealed*: any
data plane resumes it from the id alone, so a session survives its requests landing on
another data plane or the first one being killed; ``DELETE`` and ``logging/setLevel`` reach
the others through :mod:`gateway.dataplane.session_events`. Other ids (the 2024-11-05
HTTP+SSE transport's, whose stream lives on one data plane) are 256-bit random.

This table holds each data plane's *local state* of a session (its listener, subscriptions,
requests in progress, resumable streams). It forgets a session idle longer than the idle
timeout — for a sealed session that ends the local state only: its next request resumes it.
A sealed session ends with ``DELETE`` or at ``max_age``. The table is bounded per subject
(a subject over its share loses its own oldest local state) and overall (when full of live
sessions, ``initialize`` and resumption are refused with 503 rather than evicting other
subjects' sessions).
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from time import time as unix_time
from typing import TYPE_CHECKING, Any

import anyio

from gateway.dataplane.session_seal import PREFIX as SEALED_PREFIX
from gateway.dataplane.session_seal import session_ref

if TYPE_CHECKING:
    from gateway.dataplane.listening import Listener, Subscription
    from gateway.dataplane.resumable import CallStream
    from gateway.dataplane.session_seal import SessionSeal

__all__ = ["Answer", "Session", "SessionLimitReached", "SessionStore", "SessionUnavailable", "SessionsNotSynced"]


class SessionUnavailable(Exception):
    """A session cannot be opened or resumed right now: refuse with HTTP 503 (retry)."""

    message = "Session unavailable; retry later"


class SessionLimitReached(SessionUnavailable):
    """Every slot holds a live session of someone else: refuse (HTTP 503)."""

    message = "Too many sessions; retry later"


class SessionsNotSynced(SessionUnavailable):
    """This data plane has not read the session events feed yet, so it cannot tell whether a
    sealed id it does not hold was ended elsewhere: refuse (HTTP 503) rather than resume it."""

    message = "Sessions are not available on this data plane yet; retry"


@dataclass(eq=False, slots=True)
class Answer:
    """A request relayed to the client, waiting for the client's response."""

    event: anyio.Event = field(default_factory=anyio.Event)
    message: dict[str, Any] | None = None


@dataclass(slots=True)
class Session:
    """One client session.

    Attributes:
        capabilities: The client's ``initialize`` ``capabilities`` (an object).
        log_level: The level the client last set with an allowed ``logging/setLevel``.
        answers: Requests relayed to the client (by the id the gateway gave them,
            ``gw-<n>``) waiting for its response; see :meth:`expect` and :meth:`deliver`.
        running: Cancel scopes of the client's requests in progress, by their JSON-RPC id
            (as canonical JSON), for ``notifications/cancelled``.
        listener: Where this session's notifications outside any call are queued
            (:mod:`gateway.dataplane.listening`), created on first need; ``stream_open``
            while a ``GET`` stream drains it.
        subscriptions: The session's resource subscriptions, by (server, upstream URI).
        streams: Its requests answered as resumable SSE streams, by stream number (the
            part of their event ids before the ``-``; :mod:`gateway.dataplane.resumable`).
        ref: The public reference (:func:`~gateway.dataplane.session_seal.session_ref`) the
            audit trail, policy input and session events carry instead of the id.
        resumed: True when this data plane took the session over from its sealed id.
    """

    id: str
    owner: tuple[str, str]
    protocol_version: str
    last_used: float
    capabilities: dict[str, Any] = field(default_factory=dict)
    log_level: str | None = None
    answers: dict[str, Answer] = field(default_factory=dict)
    running: dict[str, anyio.CancelScope] = field(default_factory=dict)
    listener: Listener | None = None
    stream_open: bool = False
    subscriptions: dict[tuple[str, str], Subscription] = field(default_factory=dict)
    streams: dict[str, CallStream] = field(default_factory=dict)
    ref: str = ""
    resumed: bool = False
    expires_at: int = 0
    """Unix seconds when a sealed id stops opening (0: not sealed, lives here only)."""
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _stream_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        if not self.ref:
            self.ref = session_ref(self.id)

    @property
    def sealed(self) -> bool:
        """True when any data plane of the deployment can resume this session."""
        return self.expires_at > 0

    def next_stream(self) -> int:
        """A fresh stream number (event ids are unique in the session)."""
        return next(self._stream_ids)

    def expect(self) -> tuple[str, Answer]:
        """A fresh id for a request to the client, and where its response will land."""
        request_id = f"gw-{next(self._ids)}"
        answer = self.answers[request_id] = Answer()
        return request_id, answer

    def deliver(self, message: dict[str, Any]) -> bool:
        """Hand the client's response to the request waiting for it; False when none is."""
        msg_id = message.get("id")
        answer = self.answers.pop(msg_id, None) if isinstance(msg_id, str) else None
        if answer is None:
            return False
        answer.message = message
        answer.event.set()
        return True


class SessionStore:
    """Bounded, idle-expiring session table (in memory, per data-plane process).

    Args:
        idle_timeout: Seconds of inactivity after which a session is gone.
        max_sessions: Most live sessions overall.
        max_per_owner: Most live sessions of one subject; its oldest is evicted beyond this.
        on_close: Called with each session that ends (deleted, expired or evicted), to
            release what it holds (its listener and subscriptions).
        seal: Seals new sessions' ids and opens ids this table does not hold (resumption);
            None: every id is random and lives on this data plane only.
        ended: ``ended(ref)`` is True when a sealed session was ended (``DELETE``) on any
            data plane: its id no longer resumes.
        level: ``level(ref)``: the ``logging/setLevel`` level a resumed session last set on
            any data plane, or None.
        synced: ``synced()`` is True once ``ended`` can be trusted (the feed was read);
            before, resuming raises :class:`SessionsNotSynced`.
    """

    def __init__(
        self,
        *,
        idle_timeout: float,
        max_sessions: int,
        max_per_owner: int = 64,
        on_close: Callable[[Session], None] | None = None,
        seal: SessionSeal | None = None,
        ended: Callable[[str], bool] | None = None,
        level: Callable[[str], str | None] | None = None,
        synced: Callable[[], bool] | None = None,
    ) -> None:
        self._on_close = on_close
        self._seal = seal
        self._ended = ended or (lambda _ref: False)
        self._level = level or (lambda _ref: None)
        self._synced = synced or (lambda: True)
        self._idle = idle_timeout
        self._max = max_sessions
        self._max_per_owner = max_per_owner
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._by_ref: dict[str, str] = {}

    def __len__(self) -> int:
        """Sessions this data plane holds state of now."""
        return len(self._sessions)

    def create(
        self,
        owner: tuple[str, str],
        protocol_version: str,
        capabilities: dict[str, Any] | None = None,
        *,
        resumable: bool = True,
    ) -> Session:
        """Open a session for ``owner`` (issuer, sub) whose client declared ``capabilities``;
        its id is sealed when the store has a seal and ``resumable`` (else random).

        Raises:
            SessionLimitReached: The store is full of other subjects' live sessions.
        """
        caps = dict(capabilities or {})
        if self._seal is None or not resumable:
            return self._admit(Session(secrets.token_urlsafe(32), owner, protocol_version, time.monotonic(), caps))
        began = int(unix_time())
        sid = self._seal.seal(owner, protocol_version, caps, began)
        session = Session(sid, owner, protocol_version, time.monotonic(), caps)
        session.expires_at = began + int(self._seal.max_age)
        return self._admit(session)

    def _admit(self, session: Session) -> Session:
        now = session.last_used
        owner = session.owner
        own = [sid for sid, sess in self._sessions.items() if sess.owner == owner]
        for sid in own[: max(0, len(own) - self._max_per_owner + 1)]:
            self._drop(sid)
        if len(self._sessions) >= self._max:
            self._expire(now)
        if len(self._sessions) >= self._max:
            raise SessionLimitReached(f"{len(self._sessions)} live sessions")
        self._sessions[session.id] = session
        self._by_ref[session.ref] = session.id
        return session

    def _drop(self, session_id: str) -> None:
        session = self._sessions.pop(session_id)
        self._by_ref.pop(session.ref, None)
        self._close(session)

    def expire(self) -> None:
        """End every session idle longer than the timeout (run periodically, so an abandoned
        session's listener and subscriptions do not outlive it)."""
        self._expire(time.monotonic())

    def _expire(self, now: float) -> None:
        # Oldest-used first (get() moves a used session to the end), so stop at the first live one.
        while self._sessions:
            sid, sess = next(iter(self._sessions.items()))
            if now - sess.last_used <= self._idle:
                return
            if sess.stream_open:  # an open event stream is use: the session stays
                sess.last_used = now
                self._sessions.move_to_end(sid)
                continue
            self._drop(sid)

    def get(self, session_id: str, owner: tuple[str, str], *, resume: bool = True) -> Session | None:
        """The live session with this id owned by ``owner``, else None; a sealed id this
        table does not hold (or forgot when idle) is resumed (unless ``resume`` is False):
        opened, checked against ended sessions, and given local state.

        Raises:
            SessionLimitReached: Resuming needs a slot and the store is full of other
                subjects' live sessions.
            SessionsNotSynced: Resuming, before the session events feed was read.
        """
        session = self._sessions.get(session_id)
        now = time.monotonic()
        if session is not None and session.sealed and unix_time() >= session.expires_at:
            self._drop(session_id)  # its max age: over here too, not only where it would resume
            return None
        if session is not None and now - session.last_used > self._idle and not session.stream_open:
            self._drop(session_id)
            session = None
        if session is None:
            return self._resume(session_id, owner) if resume else None
        # compare bytes: compare_digest raises TypeError on non-ASCII str (e.g. sub "josé")
        if not secrets.compare_digest("\x00".join(session.owner).encode(), "\x00".join(owner).encode()):
            return None
        session.last_used = now
        self._sessions.move_to_end(session_id)
        return session

    def _resume(self, session_id: str, owner: tuple[str, str]) -> Session | None:
        if self._seal is None or not session_id.startswith(SEALED_PREFIX):
            return None
        opened = self._seal.open(session_id, owner)
        if opened is None:
            return None
        if not self._synced():
            raise SessionsNotSynced(session_id[:8])
        session = Session(session_id, owner, opened.protocol_version, time.monotonic(), opened.capabilities)
        if self._ended(session.ref):
            return None
        session.resumed = True
        session.expires_at = opened.began + int(self._seal.max_age)
        session.log_level = self._level(session.ref)
        return self._admit(session)

    def delete(self, session_id: str, owner: tuple[str, str]) -> Session | None:
        """End a session (``DELETE``): the ended session, or None when unknown or not the
        owner's. Telling the other data planes is the caller's part."""
        session = self.get(session_id, owner)
        if session is None:
            return None
        self._drop(session_id)
        return session

    def end(self, ref: str) -> bool:
        """Drop the local state of the session ``ref`` (ended on another data plane)."""
        sid = self._by_ref.get(ref)
        if sid is None:
            return False
        self._drop(sid)
        return True

    def apply_event(self, ref: str, kind: str, value: str | None) -> None:
        """A session event read from the feed (:mod:`gateway.dataplane.session_events`): end
        the session ``ref`` here (``ended``), or set its log level (``log_level``)."""
        if kind == "ended":
            self.end(ref)
        elif (session := self.find(ref)) is not None:
            session.log_level = value

    def find(self, ref: str) -> Session | None:
        """The session with public reference ``ref`` held here, else None."""
        sid = self._by_ref.get(ref)
        return self._sessions.get(sid) if sid is not None else None

    def _close(self, session: Session) -> None:
        if self._on_close is not None:
            self._on_close(session)
