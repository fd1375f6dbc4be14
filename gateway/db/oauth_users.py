"""Per-user OAuth tokens (credential kind ``oauth_authorization_code``), pending connects and
the clients the gateway registered (RFC 7591). Tables of ``0007_oauth_user_tokens.sql``.

Every secret (refresh and access tokens, PKCE verifiers, a registered client's secret) is
sealed with :func:`gateway.credentials.seal` under the credential's id; the envelope's
``kind`` slot carries a label naming the purpose and, for user data, the subject
(``["gateway.oauth-user.v1", purpose, issuer, sub]``), so a sealed value copied onto another
row, user or credential does not open. Plaintext never reaches a query.

Times are Unix seconds (float) at this module's boundary.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from gateway.credentials import CredentialDecryptError, Keyring, Sealed, open_sealed, seal

__all__ = [
    "CONNECT_TTL",
    "PendingConnect",
    "RegisteredClient",
    "UserTokens",
    "claim_connect",
    "create_connect",
    "delete_for_credential",
    "delete_tokens",
    "finish_connect",
    "load_client",
    "load_tokens",
    "save_client",
    "server_url",
    "set_connect_state",
    "store_tokens",
]

log = logging.getLogger(__name__)

CONNECT_TTL = 600.0
"""Seconds a connect URL stays valid (single use)."""

Subject = tuple[str, str]
"""(issuer, sub) of the caller the tokens belong to."""


@dataclass(frozen=True, slots=True)
class UserTokens:
    """One user's tokens for one credential; ``repr`` never shows them."""

    issuer: str
    """The authorization server (its metadata's ``issuer``, or ``configured``)."""
    token_endpoint: str
    refresh_token: str | None = field(repr=False)
    access_token: str | None = field(repr=False)
    access_expires_at: float
    """Unix seconds; 0 when unknown (then the access token is not used)."""
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class PendingConnect:
    """A connect row: who it is for, and (once opened) the flow's state."""

    handle: str = field(repr=False)
    credential_id: str
    server: str
    subject: Subject
    issuer: str | None
    token_endpoint: str | None
    redirect_uri: str | None
    verifier: str | None = field(repr=False, default=None)


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    """A client the gateway registered at ``issuer`` (RFC 7591)."""

    client_id: str
    auth_method: str
    redirect_uri: str
    client_secret: str | None = field(repr=False, default=None)


def _label(purpose: str, subject: Subject | None = None) -> str:
    parts: list[str] = ["gateway.oauth-user.v1", purpose]
    if subject is not None:
        parts += [subject[0], subject[1]]
    return orjson.dumps(parts).decode()


def _seal(keyring: Keyring, credential_id: str, label: str, value: Any) -> Sealed:
    return seal(keyring, orjson.dumps(value), credential_id=credential_id, kind=label)


def _open(keyring: Keyring, credential_id: str, label: str, row: asyncpg.Record) -> Any:
    sealed = Sealed(row["kek_id"], row["wrapped_dek"], row["nonce"], row["ciphertext"])
    return orjson.loads(open_sealed(keyring, sealed, credential_id=credential_id, kind=label))


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


# ---------------------------------------------------------------- user tokens
_UPSERT_TOKENS = """
INSERT INTO credential_user_tokens (tenant, environment, credential_id, subject_issuer, subject_sub, kek_id,
    wrapped_dek, nonce, ciphertext, access_expires_at, scope, issuer, token_endpoint)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13
FROM credentials c WHERE c.tenant = $1 AND c.environment = $2 AND c.id = $3 AND c.revoked_at IS NULL
ON CONFLICT (tenant, environment, credential_id, subject_issuer, subject_sub) DO UPDATE SET
    issuer = excluded.issuer, token_endpoint = excluded.token_endpoint,
    kek_id = excluded.kek_id, wrapped_dek = excluded.wrapped_dek, nonce = excluded.nonce,
    ciphertext = excluded.ciphertext, access_expires_at = excluded.access_expires_at, scope = excluded.scope,
    updated_at = now()
"""
_SELECT_TOKENS = """
SELECT t.kek_id, t.wrapped_dek, t.nonce, t.ciphertext, t.access_expires_at, t.scope, t.issuer, t.token_endpoint
FROM credential_user_tokens t JOIN credentials c
  ON c.tenant = t.tenant AND c.environment = t.environment AND c.id = t.credential_id
WHERE t.tenant = $1 AND t.environment = $2 AND t.credential_id = $3 AND t.subject_issuer = $4
  AND t.subject_sub = $5 AND c.revoked_at IS NULL
"""
_DELETE_TOKENS = """
DELETE FROM credential_user_tokens
WHERE tenant = $1 AND environment = $2 AND credential_id = $3 AND subject_issuer = $4 AND subject_sub = $5
"""


async def store_tokens(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    credential_id: str,
    subject: Subject,
    keyring: Keyring,
    tokens: UserTokens,
) -> None:
    """Seal and store (insert or replace) ``subject``'s tokens for ``credential_id``; nothing is
    stored once the credential is revoked (a callback or refresh still running then)."""
    body = {"refresh_token": tokens.refresh_token, "access_token": tokens.access_token}
    sealed = _seal(keyring, credential_id, _label("tokens", subject), body)
    await conn.execute(
        _UPSERT_TOKENS,
        tenant,
        environment,
        uuid.UUID(credential_id),
        subject[0],
        subject[1],
        sealed.kek_id,
        sealed.wrapped_dek,
        sealed.nonce,
        sealed.ciphertext,
        _ts(tokens.access_expires_at) if tokens.access_expires_at else None,
        tokens.scope,
        tokens.issuer,
        tokens.token_endpoint,
    )


async def load_tokens(
    conn: asyncpg.Connection, tenant: str, environment: str, credential_id: str, subject: Subject, keyring: Keyring
) -> UserTokens | None:
    """``subject``'s tokens for the live credential ``credential_id``; None when there are
    none, or they no longer open (their KEK is gone, or the row was altered: logged)."""
    row = await conn.fetchrow(_SELECT_TOKENS, tenant, environment, uuid.UUID(credential_id), subject[0], subject[1])
    if row is None:
        return None
    try:
        body = _open(keyring, credential_id, _label("tokens", subject), row)
    except (CredentialDecryptError, ValueError) as exc:
        log.warning("user tokens of credential %s do not open (%s): treated as not connected", credential_id, exc)
        return None
    expires = row["access_expires_at"]
    return UserTokens(
        row["issuer"],
        row["token_endpoint"],
        body.get("refresh_token"),
        body.get("access_token"),
        expires.timestamp() if expires is not None else 0.0,
        row["scope"],
    )


async def delete_tokens(
    conn: asyncpg.Connection, tenant: str, environment: str, credential_id: str, subject: Subject
) -> None:
    """Forget ``subject``'s tokens (the authorization server refused the refresh token)."""
    await conn.execute(_DELETE_TOKENS, tenant, environment, uuid.UUID(credential_id), subject[0], subject[1])


# ---------------------------------------------------------------- pending connects
_INSERT_CONNECT = """
INSERT INTO oauth_connects (handle, tenant, environment, credential_id, server, subject_issuer, subject_sub,
    expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""
_PURGE_CONNECTS = "DELETE FROM oauth_connects WHERE expires_at < now() - interval '1 hour'"
_REPLACE_CONNECTS = """
DELETE FROM oauth_connects
WHERE tenant = $1 AND environment = $2 AND credential_id = $3 AND server = $4 AND subject_issuer = $5
  AND subject_sub = $6 AND opened_at IS NULL
"""
_CLAIM_CONNECT = """
UPDATE oauth_connects o SET opened_at = now()
FROM credentials c
WHERE o.handle = $1 AND o.tenant = $2 AND o.environment = $3 AND o.opened_at IS NULL AND o.used_at IS NULL
  AND o.expires_at > now() AND c.tenant = o.tenant AND c.environment = o.environment AND c.id = o.credential_id
  AND c.revoked_at IS NULL
RETURNING o.handle, o.credential_id, o.server, o.subject_issuer, o.subject_sub
"""
_SET_STATE = """
UPDATE oauth_connects SET state = $2, issuer = $3, redirect_uri = $4, kek_id = $5, wrapped_dek = $6, nonce = $7,
    ciphertext = $8, token_endpoint = $9
WHERE handle = $1 AND used_at IS NULL
"""
_FINISH_CONNECT = """
UPDATE oauth_connects SET used_at = now()
WHERE state = $1 AND tenant = $2 AND environment = $3 AND used_at IS NULL AND opened_at IS NOT NULL
  AND expires_at > now()
RETURNING handle, credential_id, server, subject_issuer, subject_sub, issuer, token_endpoint, redirect_uri, kek_id,
    wrapped_dek, nonce, ciphertext
"""


async def create_connect(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    credential_id: str,
    server: str,
    subject: Subject,
    *,
    ttl: float = CONNECT_TTL,
) -> str:
    """A new pending connect for ``subject``, replacing its older unopened ones for the same
    credential and server; returns its handle (256 random bits, URL-safe)."""
    handle = secrets.token_urlsafe(32)
    await conn.execute(_PURGE_CONNECTS)
    # One pending link per user, server and credential: a newer one replaces the older unopened
    # ones (bounded growth; a leaked older link stops working).
    await conn.execute(_REPLACE_CONNECTS, tenant, environment, uuid.UUID(credential_id), server, subject[0], subject[1])
    await conn.execute(
        _INSERT_CONNECT,
        handle,
        tenant,
        environment,
        uuid.UUID(credential_id),
        server,
        subject[0],
        subject[1],
        _ts(time.time() + ttl),
    )
    return handle


async def claim_connect(conn: asyncpg.Connection, tenant: str, environment: str, handle: str) -> PendingConnect | None:
    """Open the connect ``handle`` once: None when it is unknown, expired, already opened,
    or its credential is revoked."""
    row = await conn.fetchrow(_CLAIM_CONNECT, handle, tenant, environment)
    if row is None:
        return None
    subject = (row["subject_issuer"], row["subject_sub"])
    return PendingConnect(row["handle"], str(row["credential_id"]), row["server"], subject, None, None, None)


async def set_connect_state(
    conn: asyncpg.Connection,
    connect: PendingConnect,
    keyring: Keyring,
    *,
    state: str,
    issuer: str,
    token_endpoint: str,
    redirect_uri: str,
    verifier: str,
) -> None:
    """Record the authorization request of an opened connect (``verifier`` is sealed)."""
    sealed = _seal(keyring, connect.credential_id, _label("verifier", connect.subject), verifier)
    await conn.execute(
        _SET_STATE,
        connect.handle,
        state,
        issuer,
        redirect_uri,
        sealed.kek_id,
        sealed.wrapped_dek,
        sealed.nonce,
        sealed.ciphertext,
        token_endpoint,
    )


async def finish_connect(
    conn: asyncpg.Connection, tenant: str, environment: str, state: str, keyring: Keyring
) -> PendingConnect | None:
    """Mark the connect of ``state`` used and return it with its verifier; None when no
    opened, unused, unexpired connect has that state (or its verifier does not open)."""
    row = await conn.fetchrow(_FINISH_CONNECT, state, tenant, environment)
    if row is None or row["kek_id"] is None:
        return None
    credential_id = str(row["credential_id"])
    subject = (row["subject_issuer"], row["subject_sub"])
    try:
        verifier = _open(keyring, credential_id, _label("verifier", subject), row)
    except (CredentialDecryptError, ValueError):
        return None
    return PendingConnect(
        row["handle"],
        credential_id,
        row["server"],
        subject,
        row["issuer"],
        row["token_endpoint"],
        row["redirect_uri"],
        str(verifier),
    )


async def server_url(conn: asyncpg.Connection, tenant: str, environment: str, name: str) -> str | None:
    """The registered URL of server ``name`` (None: unknown, or a stdio server)."""
    value = await conn.fetchval(
        "SELECT url FROM mcp_servers WHERE tenant = $1 AND environment = $2 AND name = $3", tenant, environment, name
    )
    return str(value) if value else None


# ---------------------------------------------------------------- registered clients
_SELECT_CLIENT = """
SELECT client_id, auth_method, redirect_uri, kek_id, wrapped_dek, nonce, ciphertext FROM credential_oauth_clients
WHERE tenant = $1 AND environment = $2 AND credential_id = $3 AND issuer = $4
"""
_UPSERT_CLIENT = """
INSERT INTO credential_oauth_clients (tenant, environment, credential_id, issuer, client_id, auth_method,
    redirect_uri, kek_id, wrapped_dek, nonce, ciphertext)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (tenant, environment, credential_id, issuer) DO UPDATE SET
    client_id = excluded.client_id, auth_method = excluded.auth_method, redirect_uri = excluded.redirect_uri,
    kek_id = excluded.kek_id, wrapped_dek = excluded.wrapped_dek, nonce = excluded.nonce,
    ciphertext = excluded.ciphertext, created_at = now()
"""


async def load_client(
    conn: asyncpg.Connection, tenant: str, environment: str, credential_id: str, issuer: str, keyring: Keyring
) -> RegisteredClient | None:
    """The client registered for ``credential_id`` at ``issuer``; None when there is none
    (or its secret no longer opens)."""
    row = await conn.fetchrow(_SELECT_CLIENT, tenant, environment, uuid.UUID(credential_id), issuer)
    if row is None:
        return None
    secret: str | None = None
    if row["kek_id"] is not None:
        try:
            secret = str(_open(keyring, credential_id, _label("client", (issuer, row["client_id"])), row))
        except (CredentialDecryptError, ValueError):
            return None
    return RegisteredClient(row["client_id"], row["auth_method"], row["redirect_uri"], secret)


async def save_client(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    credential_id: str,
    issuer: str,
    client: RegisteredClient,
    keyring: Keyring,
) -> None:
    """Store (or replace) the client registered for ``credential_id`` at ``issuer``."""
    parts: list[Any] = [None, None, None, None]
    if client.client_secret is not None:
        sealed = _seal(keyring, credential_id, _label("client", (issuer, client.client_id)), client.client_secret)
        parts = [sealed.kek_id, sealed.wrapped_dek, sealed.nonce, sealed.ciphertext]
    await conn.execute(
        _UPSERT_CLIENT,
        tenant,
        environment,
        uuid.UUID(credential_id),
        issuer,
        client.client_id,
        client.auth_method,
        client.redirect_uri,
        *parts,
    )


async def delete_for_credential(conn: asyncpg.Connection, tenant: str, environment: str, credential_id: str) -> None:
    """Delete every user token, pending connect and registered client of ``credential_id``
    (its revocation)."""
    key = uuid.UUID(credential_id)
    for table in ("credential_user_tokens", "oauth_connects", "credential_oauth_clients"):
        await conn.execute(
            f"DELETE FROM {table} WHERE tenant = $1 AND environment = $2 AND credential_id = $3",  # noqa: S608
            tenant,
            environment,
            key,
        )
