"""Client-facing legacy MCP sessions (``Mcp-Session-Id``, MCP 2025-03-26..2025-11-25).

Session ids are 256-bit random, bound to the authenticated subject
(``issuer`` + ``sub``): a request presenting another subject's session id is
answered 404 exactly like an unknown id (MCP security best practices, "Session
Hijacking"). Sessions expire after an idle timeout; the store is bounded per
subject (a subject over its share loses its own oldest session) and overall
(when full of live sessions, ``initialize`` is refused with 503 rather than
evicting other subjects' sessions).
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from gateway.dataplane.listening import Listener, Subscription
    from gateway.dataplane.resumable import CallStream

__all__ = ["Answer", "Session", "SessionLimitReached", "SessionStore"]


class SessionLimitReached(Exception):
    """Every slot holds a live session of someone else: refuse (HTTP 503)."""


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
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _stream_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

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
    """

    def __init__(
        self,
        *,
        idle_timeout: float,
        max_sessions: int,
        max_per_owner: int = 64,
        on_close: Callable[[Session], None] | None = None,
    ) -> None:
        self._on_close = on_close
        self._idle = idle_timeout
        self._max = max_sessions
        self._max_per_owner = max_per_owner
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(
        self, owner: tuple[str, str], protocol_version: str, capabilities: dict[str, Any] | None = None
    ) -> Session:
        """Open a session for ``owner`` (issuer, sub) whose client declared ``capabilities``.

        Raises:
            SessionLimitReached: The store is full of other subjects' live sessions.
        """
        now = time.monotonic()
        own = [sid for sid, sess in self._sessions.items() if sess.owner == owner]
        for sid in own[: max(0, len(own) - self._max_per_owner + 1)]:
            self._close(self._sessions.pop(sid))
        if len(self._sessions) >= self._max:
            self._expire(now)
        if len(self._sessions) >= self._max:
            raise SessionLimitReached(f"{len(self._sessions)} live sessions")
        session = Session(secrets.token_urlsafe(32), owner, protocol_version, now, dict(capabilities or {}))
        self._sessions[session.id] = session
        return session

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
            self._close(self._sessions.pop(sid))

    def get(self, session_id: str, owner: tuple[str, str]) -> Session | None:
        """The live session with this id owned by ``owner``, else None."""
        session = self._sessions.get(session_id)
        now = time.monotonic()
        if session is None:
            return None
        if now - session.last_used > self._idle and not session.stream_open:
            self._close(self._sessions.pop(session_id))
            return None
        # compare bytes: compare_digest raises TypeError on non-ASCII str (e.g. sub "josé")
        if not secrets.compare_digest("\x00".join(session.owner).encode(), "\x00".join(owner).encode()):
            return None
        session.last_used = now
        self._sessions.move_to_end(session_id)
        return session

    def delete(self, session_id: str, owner: tuple[str, str]) -> bool:
        """End a session (``DELETE``); False when unknown or not the owner's."""
        if self.get(session_id, owner) is None:
            return False
        self._close(self._sessions.pop(session_id))
        return True

    def _close(self, session: Session) -> None:
        if self._on_close is not None:
            self._on_close(session)
