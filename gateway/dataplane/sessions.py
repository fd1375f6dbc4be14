"""Client-facing legacy MCP sessions (``Mcp-Session-Id``, MCP 2025-03-26..2025-11-25).

Session ids are 256-bit random, bound to the authenticated subject
(``issuer`` + ``sub``): a request presenting another subject's session id is
answered 404 exactly like an unknown id (MCP security best practices, "Session
Hijacking"). Sessions expire after an idle timeout; the store is bounded.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Session", "SessionStore"]


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
        max_sessions: Oldest sessions are evicted beyond this count.
    """

    def __init__(self, *, idle_timeout: float, max_sessions: int) -> None:
        self._idle = idle_timeout
        self._max = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, owner: tuple[str, str], protocol_version: str) -> Session:
        """Open a session for ``owner`` (issuer, sub)."""
        session = Session(secrets.token_urlsafe(32), owner, protocol_version, time.monotonic())
        self._sessions[session.id] = session
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)
        return session

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
