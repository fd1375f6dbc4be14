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

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Session", "SessionLimitReached", "SessionStore"]


class SessionLimitReached(Exception):
    """Every slot holds a live session of someone else: refuse (HTTP 503)."""


@dataclass(slots=True)
class Session:
    """One client session."""

    id: str
    owner: tuple[str, str]
    protocol_version: str
    last_used: float


class SessionStore:
    """Bounded, idle-expiring session table (in memory, per data-plane process).

    Args:
        idle_timeout: Seconds of inactivity after which a session is gone.
        max_sessions: Most live sessions overall.
        max_per_owner: Most live sessions of one subject; its oldest is evicted beyond this.
    """

    def __init__(self, *, idle_timeout: float, max_sessions: int, max_per_owner: int = 64) -> None:
        self._idle = idle_timeout
        self._max = max_sessions
        self._max_per_owner = max_per_owner
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, owner: tuple[str, str], protocol_version: str) -> Session:
        """Open a session for ``owner`` (issuer, sub).

        Raises:
            SessionLimitReached: The store is full of other subjects' live sessions.
        """
        now = time.monotonic()
        own = [sid for sid, sess in self._sessions.items() if sess.owner == owner]
        for sid in own[: max(0, len(own) - self._max_per_owner + 1)]:
            del self._sessions[sid]
        if len(self._sessions) >= self._max:
            self._expire(now)
        if len(self._sessions) >= self._max:
            raise SessionLimitReached(f"{len(self._sessions)} live sessions")
        session = Session(secrets.token_urlsafe(32), owner, protocol_version, now)
        self._sessions[session.id] = session
        return session

    def _expire(self, now: float) -> None:
        # Oldest-used first (get() moves a used session to the end), so stop at the first live one.
        while self._sessions:
            sid, sess = next(iter(self._sessions.items()))
            if now - sess.last_used <= self._idle:
                return
            del self._sessions[sid]

    def get(self, session_id: str, owner: tuple[str, str]) -> Session | None:
        """The live session with this id owned by ``owner``, else None."""
        session = self._sessions.get(session_id)
        now = time.monotonic()
        if session is None:
            return None
        if now - session.last_used > self._idle:
            del self._sessions[session_id]
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
        del self._sessions[session_id]
        return True
