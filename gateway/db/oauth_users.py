"""Per-user OAuth tokens (credential kind ``oauth_authorization_code``), pending connects and
the clients the gateway registered (RFC 7591). Tables of ``0007_oauth_user_tokens.sql`` as
changed by ``0008_oauth_user_hardening.sql``.

Every secret (refresh and access tokens, PKCE verifiers, a registered client's secret) is
sealed with :func:`gateway.credentials.seal` under the credential's id; the envelope's
``kind`` slot carries a label naming the purpose and, for user data, the subject
(``["gateway.oauth-user.v1", purpose, issuer, sub]``), so a sealed value copied onto another
row, user or credential does not open. Where the secrets are sent (issuer, token endpoint,
redirect URI) is sealed with them. Connect handles, OAuth ``state`` and the browser nonce are
stored as SHA-256 digests only. Plaintext never reaches a query.

Concurrency: a user's token row has a ``generation``; a refresh first takes a lease on the row
(:func:`claim_refresh`, conditional on the generation it read), and its result is written or
deleted only if the generation is still the one it read, so two control-plane processes never
refresh with the same (single-use, rotated) refresh token nor delete each other's result.

Times are Unix seconds (float) at this module's boundary.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from gateway.credentials import CredentialDecryptError, Keyring, Sealed, open_sealed, seal

__all__ = [
    "CONNECT_TTL",
    "ConnectFlow",
    "PendingConnect",
    "RegisteredClient",
    "UserTokens",
    "claim_connect",
    "claim_refresh",
    "create_connect",
    "delete_for_credential",
    "delete_tokens",
    "digest",
    "finish_connect",
    "load_client",
    "load_tokens",
    "peek_connect",
    "release_refresh",
    "save_client",
    "server_url",
    "state_pending",
    "set_connect_state",
    "store_tokens",
]

log = logging.getLogger(__name__)

CONNECT_TTL = 600.0
"""Seconds a connect URL stays valid (single use)."""

Subject = tuple[str, str]
"""(issuer, sub) of the caller the tokens belong to."""


def digest(value: str) -> str:
    """Lower-case hex SHA-256 of ``value`` (UTF-8): how handles, states and nonces are stored."""
    return hashlib.sha256(value.encode()).hexdigest()


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
    generation: int = 0
    """The row's generation when read (0 for tokens not stored yet)."""
    forced_age: float | None = None
    """Seconds since a refresh was last forced for this row, by the database's clock (None:
    never)."""


@dataclass(frozen=True, slots=True)
class ConnectFlow:
    """The authorization request of an opened connect (sealed with its PKCE verifier)."""

    issuer: str
    token_endpoint: str
    redirect_uri: str
    verifier: str = field(repr=False)
    iss_required: bool = False
    """The authorization server advertised ``authorization_response_iss_parameter_supported``
    (RFC 9207 section 3), or the credential pins its issuer: the callback needs ``iss``."""


@dataclass(frozen=True, slots=True)
class PendingConnect:
    """A connect row: who it is for and, once opened, the flow and the browser's nonce digest."""

    key: str = field(repr=False)
    """The handle's digest (the row's primary key)."""
    credential_id: str
    server: str
    subject: Subject
    flow: ConnectFlow | None = None
    browser_hash: str | None = field(repr=False, default=None)


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
_KEY = "tenant = $1 AND environment = $2 AND credential_id = $3 AND subject_issuer = $4 AND subject_sub = $5"
_UPSERT_TOKENS = """
INSERT INTO credential_user_tokens (tenant, environment, credential_id, subject_issuer, subject_sub, kek_id,
    wrapped_dek, nonce, ciphertext, access_expires_at, scope)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11
FROM credentials c WHERE c.tenant = $1 AND c.environment = $2 AND c.id = $3 AND c.revoked_at IS NULL
ON CONFLICT (tenant, environment, credential_id, subject_issuer, subject_sub) DO UPDATE SET
    kek_id = excluded.kek_id, wrapped_dek = excluded.wrapped_dek, nonce = excluded.nonce,
    ciphertext = excluded.ciphertext, access_expires_at = excluded.access_expires_at, scope = excluded.scope,
    generation = credential_user_tokens.generation + 1, refresh_lease_until = NULL, updated_at = now()
RETURNING generation
"""
_UPDATE_TOKENS = f"""
UPDATE credential_user_tokens t SET kek_id = $7, wrapped_dek = $8, nonce = $9, ciphertext = $10,
    access_expires_at = $11, scope = $12, generation = t.generation + 1, refresh_lease_until = NULL,
    updated_at = now()
FROM credentials c
WHERE t.{_KEY.replace(" AND ", " AND t.")} AND t.generation = $6
  AND c.tenant = t.tenant AND c.environment = t.environment AND c.id = t.credential_id AND c.revoked_at IS NULL
RETURNING t.generation
"""
_SELECT_TOKENS = f"""
SELECT t.kek_id, t.wrapped_dek, t.nonce, t.ciphertext, t.access_expires_at, t.scope, t.generation,
    extract(epoch FROM now() - t.forced_refresh_at)::float8 AS forced_age
FROM credential_user_tokens t JOIN credentials c
  ON c.tenant = t.tenant AND c.environment = t.environment AND c.id = t.credential_id
WHERE t.{_KEY.replace(" AND ", " AND t.")} AND c.revoked_at IS NULL
"""
_DELETE_TOKENS = f"DELETE FROM credential_user_tokens WHERE {_KEY} AND generation = $6"
_CLAIM_REFRESH = f"""
UPDATE credential_user_tokens SET refresh_lease_until = now() + make_interval(secs => $7),
    forced_refresh_at = CASE WHEN $8 THEN now() ELSE forced_refresh_at END
WHERE {_KEY} AND generation = $6 AND (refresh_lease_until IS NULL OR refresh_lease_until < now())
RETURNING 1
"""
_RELEASE_REFRESH = f"UPDATE credential_user_tokens SET refresh_lease_until = NULL WHERE {_KEY} AND generation = $6"


def _token_key(tenant: str, environment: str, credential_id: str, subject: Subject) -> tuple[Any, ...]:
    return (tenant, environment, uuid.UUID(credential_id), subject[0], subject[1])


async def store_tokens(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    credential_id: str,
    subject: Subject,
    keyring: Keyring,
    tokens: UserTokens,
    *,
    expected_generation: int | None = None,
) -> int | None:
    """Seal and store ``subject``'s tokens for ``credential_id``; the row's new generation.

    Without ``expected_generation`` (a callback) the row is inserted or replaced. With it (a
    refresh) it is replaced only while its generation is still that one; else None (another
    process wrote or deleted it meanwhile). Nothing is stored once the credential is revoked
    (a callback or refresh still running then): None.
    """
    body = {
        "refresh_token": tokens.refresh_token,
        "access_token": tokens.access_token,
        "issuer": tokens.issuer,
        "token_endpoint": tokens.token_endpoint,
    }
    sealed = _seal(keyring, credential_id, _label("tokens", subject), body)
    key = _token_key(tenant, environment, credential_id, subject)
    rest = (
        sealed.kek_id,
        sealed.wrapped_dek,
        sealed.nonce,
        sealed.ciphertext,
        _ts(tokens.access_expires_at) if tokens.access_expires_at else None,
        tokens.scope,
    )
    if expected_generation is None:
        value = await conn.fetchval(_UPSERT_TOKENS, *key, *rest)
    else:
        value = await conn.fetchval(_UPDATE_TOKENS, *key, expected_generation, *rest)
    return int(value) if value is not None else None


async def load_tokens(
    conn: asyncpg.Connection, tenant: str, environment: str, credential_id: str, subject: Subject, keyring: Keyring
) -> UserTokens | None:
    """``subject``'s tokens for the live credential ``credential_id``; None when there are
    none, or they no longer open (their KEK is gone, or the row was altered: logged)."""
    row = await conn.fetchrow(_SELECT_TOKENS, *_token_key(tenant, environment, credential_id, subject))
    if row is None:
        return None
    try:
        body = _open(keyring, credential_id, _label("tokens", subject), row)
        issuer, endpoint = body["issuer"], body["token_endpoint"]
        if not isinstance(issuer, str) or not isinstance(endpoint, str):
            raise ValueError("no issuer or token endpoint")
    except (CredentialDecryptError, ValueError, KeyError, TypeError) as exc:
        log.warning("user tokens of credential %s do not open (%s): treated as not connected", credential_id, exc)
        return None
    expires = row["access_expires_at"]
    return UserTokens(
        issuer,
        endpoint,
        body.get("refresh_token"),
        body.get("access_token"),
        expires.timestamp() if expires is not None else 0.0,
        row["scope"],
        int(row["generation"]),
        row["forced_age"],
    )


async def delete_tokens(
    conn: asyncpg.Connection, tenant: str, environment: str, credential_id: str, subject: Subject, generation: int
) -> bool:
    """Forget ``subject``'s tokens of ``generation`` (the authorization server refused that
    refresh token); False when the row has moved on (another refresh stored newer ones)."""
    key = _token_key(tenant, environment, credential_id, subject)
    return str(await conn.execute(_DELETE_TOKENS, *key, generation)) != "DELETE 0"


async def claim_refresh(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    credential_id: str,
    subject: Subject,
    generation: int,
    lease: float,
    *,
    forced: bool = False,
) -> bool:
    """Take the refresh lease of ``subject``'s row for ``lease`` seconds, if the row is still
    at ``generation`` and nobody else holds an unexpired lease; ``forced`` records the time
    (:attr:`UserTokens.forced_age`). True when taken."""
    key = _token_key(tenant, environment, credential_id, subject)
    return await conn.fetchval(_CLAIM_REFRESH, *key, generation, lease, forced) is not None


async def release_refresh(
    conn: asyncpg.Connection, tenant: str, environment: str, credential_id: str, subject: Subject, generation: int
) -> None:
    """Give the lease back after a refresh that failed without an answer (nothing changed)."""
    await conn.execute(_RELEASE_REFRESH, *_token_key(tenant, environment, credential_id, subject), generation)


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
_OPEN_CONNECT = """
WHERE o.handle = $1 AND o.tenant = $2 AND o.environment = $3 AND o.opened_at IS NULL AND o.used_at IS NULL
  AND o.expires_at > now() AND c.tenant = o.tenant AND c.environment = o.environment AND c.id = o.credential_id
  AND c.revoked_at IS NULL
"""
_PEEK_CONNECT = f"""
SELECT o.handle, o.credential_id, o.server, o.subject_issuer, o.subject_sub FROM oauth_connects o, credentials c
{_OPEN_CONNECT}
"""
_CLAIM_CONNECT = f"""
UPDATE oauth_connects o SET opened_at = now() FROM credentials c {_OPEN_CONNECT}
RETURNING o.handle, o.credential_id, o.server, o.subject_issuer, o.subject_sub
"""
_SET_STATE = """
UPDATE oauth_connects SET state = $2, browser_hash = $3, kek_id = $4, wrapped_dek = $5, nonce = $6, ciphertext = $7
WHERE handle = $1 AND used_at IS NULL
"""
_OPEN_STATE = """
SELECT 1 FROM oauth_connects
WHERE state = $1 AND tenant = $2 AND environment = $3 AND used_at IS NULL AND opened_at IS NOT NULL
  AND expires_at > now()
"""
_FINISH_CONNECT = """
UPDATE oauth_connects SET used_at = now()
WHERE state = $1 AND tenant = $2 AND environment = $3 AND used_at IS NULL AND opened_at IS NOT NULL
  AND expires_at > now() AND browser_hash = ANY($4::text[])
RETURNING handle, credential_id, server, subject_issuer, subject_sub, browser_hash, kek_id, wrapped_dek, nonce,
    ciphertext
"""


def _pending(row: asyncpg.Record, flow: ConnectFlow | None = None, browser_hash: str | None = None) -> PendingConnect:
    subject = (row["subject_issuer"], row["subject_sub"])
    return PendingConnect(row["handle"], str(row["credential_id"]), row["server"], subject, flow, browser_hash)


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
    credential and server; returns its handle (256 random bits, URL-safe; only its
    :func:`digest` is stored)."""
    handle = secrets.token_urlsafe(32)
    await conn.execute(_PURGE_CONNECTS)
    # One pending link per user, server and credential: a newer one replaces the older unopened
    # ones (bounded growth; a leaked older link stops working).
    await conn.execute(_REPLACE_CONNECTS, tenant, environment, uuid.UUID(credential_id), server, subject[0], subject[1])
    await conn.execute(
        _INSERT_CONNECT,
        digest(handle),
        tenant,
        environment,
        uuid.UUID(credential_id),
        server,
        subject[0],
        subject[1],
        _ts(time.time() + ttl),
    )
    return handle


async def peek_connect(conn: asyncpg.Connection, tenant: str, environment: str, handle: str) -> PendingConnect | None:
    """The connect ``handle`` while it can still be opened (unknown, expired, opened or revoked:
    None); changes nothing (the confirmation page)."""
    row = await conn.fetchrow(_PEEK_CONNECT, digest(handle), tenant, environment)
    return _pending(row) if row is not None else None


async def claim_connect(conn: asyncpg.Connection, tenant: str, environment: str, handle: str) -> PendingConnect | None:
    """Open the connect ``handle`` once: None when it is unknown, expired, already opened,
    or its credential is revoked."""
    row = await conn.fetchrow(_CLAIM_CONNECT, digest(handle), tenant, environment)
    return _pending(row) if row is not None else None


async def set_connect_state(
    conn: asyncpg.Connection,
    connect: PendingConnect,
    keyring: Keyring,
    *,
    state: str,
    browser_nonce: str,
    flow: ConnectFlow,
) -> None:
    """Record the authorization request of an opened connect: the digests of ``state`` and of
    the confirming browser's nonce, and ``flow`` sealed."""
    body = {
        "verifier": flow.verifier,
        "issuer": flow.issuer,
        "token_endpoint": flow.token_endpoint,
        "redirect_uri": flow.redirect_uri,
        "iss_required": flow.iss_required,
    }
    sealed = _seal(keyring, connect.credential_id, _label("flow", connect.subject), body)
    await conn.execute(
        _SET_STATE,
        connect.key,
        digest(state),
        digest(browser_nonce),
        sealed.kek_id,
        sealed.wrapped_dek,
        sealed.nonce,
        sealed.ciphertext,
    )


async def state_pending(conn: asyncpg.Connection, tenant: str, environment: str, state: str) -> bool:
    """True while an opened, unused, unexpired connect has ``state`` (changes nothing)."""
    return await conn.fetchval(_OPEN_STATE, digest(state), tenant, environment) is not None


async def finish_connect(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    state: str,
    keyring: Keyring,
    browser_nonces: Sequence[str],
) -> PendingConnect | None:
    """Mark the connect of ``state`` used and return it with its flow and browser digest, but
    only for the browser that confirmed it (one of ``browser_nonces`` is its nonce); None
    otherwise, and then nothing is used up (someone who learnt ``state`` elsewhere cannot burn
    the user's flow). None too when no opened, unused, unexpired connect has that state, or its
    flow does not open."""
    hashes = [digest(n) for n in browser_nonces]
    row = await conn.fetchrow(_FINISH_CONNECT, digest(state), tenant, environment, hashes)
    if row is None or row["kek_id"] is None:
        return None
    credential_id = str(row["credential_id"])
    subject = (row["subject_issuer"], row["subject_sub"])
    try:
        body = _open(keyring, credential_id, _label("flow", subject), row)
        flow = ConnectFlow(
            str(body["issuer"]),
            str(body["token_endpoint"]),
            str(body["redirect_uri"]),
            str(body["verifier"]),
            bool(body.get("iss_required")),
        )
    except (CredentialDecryptError, ValueError, KeyError, TypeError):
        return None
    return _pending(row, flow, row["browser_hash"])


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
