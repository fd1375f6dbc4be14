"""Web console sessions (migration 0015): stored by the SHA-256 of their id, never the id.

The console (``gateway.controlplane.console``) creates a row at sign-in, reads it (and
touches ``last_seen_at``) on every request, and deletes it at sign-out. A session names who
signed in (subject, issuer, the known roles its token carried, the bootstrap flag) and holds
its CSRF synchronizer token; it never holds the admin credential that was pasted. A bootstrap
session holds a 32-byte digest of the admin token it signed in with
(``gateway.controlplane.middleware.auth.admin_token_hmac``), so the console can refuse it once
that token is rotated.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

__all__ = ["ConsoleSession", "create_session", "delete_session", "load_session", "session_digest"]

_INSERT = """
INSERT INTO console_sessions (id_sha256, tenant, environment, subject, issuer, token_roles, bootstrap,
                              admin_token_hmac, csrf_token, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING created_at, expires_at
"""
_PURGE = "DELETE FROM console_sessions WHERE expires_at <= now()"
_TOUCH = """
UPDATE console_sessions SET last_seen_at = now()
WHERE id_sha256 = $1 AND tenant = $2 AND environment = $3 AND expires_at > now()
RETURNING subject, issuer, token_roles, bootstrap, admin_token_hmac, csrf_token, created_at, expires_at
"""
_DELETE = "DELETE FROM console_sessions WHERE id_sha256 = $1 AND tenant = $2 AND environment = $3"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A live console session (never its id)."""

    subject: str
    issuer: str
    token_roles: tuple[str, ...]
    bootstrap: bool
    admin_token_hmac: bytes | None
    """Bootstrap sessions: the 32-byte digest binding the session to the admin token it signed
    in with (never the token); None for a JWT's session."""
    csrf_token: str
    created_at: datetime
    expires_at: datetime


def session_digest(session_id: str) -> bytes:
    """The stored key of a session id: SHA-256 of its UTF-8 bytes (32 bytes)."""
    return hashlib.sha256(session_id.encode()).digest()


async def create_session(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    *,
    subject: str,
    issuer: str,
    token_roles: tuple[str, ...],
    bootstrap: bool,
    admin_token_hmac: bytes | None,
    expires_at: datetime,
) -> tuple[str, ConsoleSession]:
    """Store a new session and return (its id for the cookie, the session).

    Expired sessions of every scope are purged first (indexed on ``expires_at``).

    Args:
        bootstrap: Signed in with the bootstrap admin token.
        admin_token_hmac: A bootstrap session's 32-byte admin-token digest; None otherwise.
        expires_at: When the session ends (timezone-aware; after now).

    Returns:
        The session id (43 URL-safe characters, 256 random bits: the cookie's value, stored
        only as :func:`session_digest`) and the stored session.

    Raises:
        ValueError: ``admin_token_hmac`` is not 32 bytes for a bootstrap session, or is given
            for another.
    """
    if (admin_token_hmac is not None) != bootstrap or (admin_token_hmac is not None and len(admin_token_hmac) != 32):
        raise ValueError("a bootstrap session needs a 32-byte admin_token_hmac, any other none")
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    async with conn.transaction():
        await conn.execute(_PURGE)
        row = await conn.fetchrow(
            _INSERT,
            session_digest(session_id),
            tenant,
            environment,
            subject,
            issuer,
            sorted(token_roles),
            bootstrap,
            admin_token_hmac,
            csrf,
            expires_at,
        )
    assert row is not None
    return session_id, ConsoleSession(
        subject,
        issuer,
        tuple(sorted(token_roles)),
        bootstrap,
        admin_token_hmac,
        csrf,
        row["created_at"],
        row["expires_at"],
    )


async def load_session(
    conn: asyncpg.Connection, tenant: str, environment: str, session_id: str
) -> ConsoleSession | None:
    """The live session with id ``session_id`` (its ``last_seen_at`` set to now); None when
    unknown, expired, signed out or of another scope."""
    row = await conn.fetchrow(_TOUCH, session_digest(session_id), tenant, environment)
    if row is None:
        return None
    return ConsoleSession(
        row["subject"],
        row["issuer"],
        tuple(row["token_roles"]),
        row["bootstrap"],
        bytes(row["admin_token_hmac"]) if row["admin_token_hmac"] is not None else None,
        row["csrf_token"],
        row["created_at"],
        row["expires_at"],
    )


async def delete_session(conn: asyncpg.Connection, tenant: str, environment: str, session_id: str) -> bool:
    """Delete a session (sign-out); True when one was deleted."""
    status = await conn.execute(_DELETE, session_digest(session_id), tenant, environment)
    return bool(status.endswith(" 1"))
