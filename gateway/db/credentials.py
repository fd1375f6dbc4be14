"""The credentials aggregate: sealed upstream secrets (write-only) and their bindings.

Every read that serves the API selects metadata columns only (:data:`_META`); the sealed
parts (``wrapped_dek``, ``nonce``, ``ciphertext``) are read by :func:`open_credential` (for
the data plane's future brokering, never an API answer) and :func:`rewrap_all` alone.
Plaintext secrets are never passed to a query: only ciphertext is, so no database error
text can carry one.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg

from gateway.credentials import (
    Binding,
    CredentialDecryptError,
    Keyring,
    Sealed,
    SecretFields,
    ValidatedCredential,
    fingerprint,
    open_sealed,
    rewrap,
    seal,
)
from gateway.db import oauth_users
from gateway.db._errors import map_db_errors
from gateway.errors import ConflictError, NotFound, RequestRejected

__all__ = [
    "create_binding",
    "create_credential",
    "delete_binding",
    "get_credential",
    "list_bindings",
    "list_credentials",
    "load_bindings",
    "open_credential",
    "revoke_credential",
    "rewrap_all",
    "rotate_credential",
]

log = logging.getLogger(__name__)

_META = (
    "id, tenant, environment, name, kind, config, fingerprint, kek_id, created_by, created_at, rotated_at,"
    " last_used_at, revoked_at"
)
_INSERT = f"""
INSERT INTO credentials (id, tenant, environment, name, kind, config, fingerprint, kek_id, wrapped_dek, nonce,
                         ciphertext, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING {_META}
"""
_SELECT_ONE = f"SELECT {_META} FROM credentials WHERE tenant = $1 AND environment = $2 AND id = $3"
_SELECT_ALL = f"SELECT {_META} FROM credentials WHERE tenant = $1 AND environment = $2 ORDER BY created_at, id"
_LOCK_ONE = """
SELECT kind, revoked_at FROM credentials WHERE tenant = $1 AND environment = $2 AND id = $3 FOR UPDATE
"""
_ROTATE = f"""
UPDATE credentials SET config = $4, fingerprint = $5, kek_id = $6, wrapped_dek = $7, nonce = $8, ciphertext = $9,
    rotated_at = now()
WHERE tenant = $1 AND environment = $2 AND id = $3
RETURNING {_META}
"""
_REVOKE = """
UPDATE credentials SET revoked_at = coalesce(revoked_at, now()), kek_id = NULL, wrapped_dek = NULL, nonce = NULL,
    ciphertext = NULL
WHERE tenant = $1 AND environment = $2 AND id = $3
RETURNING id
"""
_DELETE_BINDINGS_OF = "DELETE FROM credential_bindings WHERE tenant = $1 AND environment = $2 AND credential_id = $3"
_SELECT_SEALED = """
SELECT kind, kek_id, wrapped_dek, nonce, ciphertext FROM credentials
WHERE tenant = $1 AND environment = $2 AND id = $3 AND revoked_at IS NULL
"""
_TO_REWRAP = """
SELECT id FROM credentials
WHERE tenant = $1 AND environment = $2 AND revoked_at IS NULL AND kek_id <> $3
ORDER BY id
"""
_LOCK_SEALED = """
SELECT kek_id, wrapped_dek, nonce, ciphertext FROM credentials
WHERE tenant = $1 AND environment = $2 AND id = $3 AND revoked_at IS NULL AND kek_id <> $4
FOR UPDATE
"""
_SET_WRAP = "UPDATE credentials SET kek_id = $2, wrapped_dek = $3 WHERE id = $1"
_COUNT_BY_KEK = """
SELECT kek_id, count(*) AS n FROM credentials
WHERE tenant = $1 AND environment = $2 AND revoked_at IS NULL GROUP BY kek_id
"""

_BINDING = "id, tenant, environment, server, subject_kind, subject_value, credential_id, created_by, created_at"
_INSERT_BINDING = f"""
INSERT INTO credential_bindings (id, tenant, environment, server, subject_kind, subject_value, credential_id,
                                 created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING {_BINDING}
"""
_SERVER_EXISTS = "SELECT transport FROM mcp_servers WHERE tenant = $1 AND environment = $2 AND name = $3"
_REQUIRE_CREDENTIAL = """
UPDATE mcp_servers SET requires_credential = true WHERE tenant = $1 AND environment = $2 AND name = $3
"""
_SHARE_CREDENTIAL = """
SELECT revoked_at, kind FROM credentials WHERE tenant = $1 AND environment = $2 AND id = $3 FOR SHARE
"""
_SELECT_BINDINGS = f"""
SELECT {_BINDING} FROM credential_bindings
WHERE tenant = $1 AND environment = $2 AND ($3::text IS NULL OR server = $3)
    AND ($4::uuid IS NULL OR credential_id = $4)
ORDER BY server, subject_kind, subject_value NULLS FIRST, id
"""
_DELETE_BINDING = "DELETE FROM credential_bindings WHERE tenant = $1 AND environment = $2 AND id = $3 RETURNING id"


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _record(row: asyncpg.Record) -> dict[str, Any]:
    rec = dict(row)
    rec["id"] = str(rec["id"])
    for key in ("created_at", "rotated_at", "last_used_at", "revoked_at"):
        rec[key] = _iso(rec[key])
    rec["status"] = "revoked" if rec["revoked_at"] else "active"
    return rec


def _binding_record(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "tenant": row["tenant"],
        "environment": row["environment"],
        "server": row["server"],
        "subject": {"kind": row["subject_kind"], "value": row["subject_value"]},
        "credential_id": str(row["credential_id"]),
        "created_by": row["created_by"],
        "created_at": row["created_at"].isoformat(),
    }


def _seal(keyring: Keyring, credential: ValidatedCredential, credential_id: str) -> tuple[str, Sealed]:
    fields = credential.secret
    sealed = seal(keyring, fields.to_bytes(), credential_id=credential_id, kind=credential.kind)
    return fingerprint(keyring, credential.kind, fields.reveal()), sealed


async def create_credential(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    *,
    name: str,
    credential: ValidatedCredential,
    keyring: Keyring,
    created_by: str,
) -> dict[str, Any]:
    """Seal ``credential.secret`` under the current KEK and store it with its metadata.

    Returns:
        The metadata record: ``id`` (UUID text), ``name``, ``kind``, ``config``, ``fingerprint``,
        ``kek_id``, ``created_by``, ``status`` and the RFC 3339 (or null) ``created_at``,
        ``rotated_at``, ``last_used_at``, ``revoked_at``, plus ``tenant``/``environment``.

    Raises:
        ConflictError: A live credential of this name exists in the scope.
    """
    credential_id = str(uuid.uuid4())
    fp, sealed = _seal(keyring, credential, credential_id)
    with map_db_errors(f"credential {name!r}"):
        row = await conn.fetchrow(
            _INSERT,
            uuid.UUID(credential_id),
            tenant,
            environment,
            name,
            credential.kind,
            credential.config,
            fp,
            sealed.kek_id,
            sealed.wrapped_dek,
            sealed.nonce,
            sealed.ciphertext,
            created_by,
        )
    return _record(row)


async def list_credentials(conn: asyncpg.Connection, tenant: str, environment: str) -> list[dict[str, Any]]:
    """Return the metadata of every credential of the scope (revoked ones too), oldest first."""
    return [_record(r) for r in await conn.fetch(_SELECT_ALL, tenant, environment)]


async def get_credential(conn: asyncpg.Connection, tenant: str, environment: str, credential_id: str) -> dict[str, Any]:
    """Return one credential's metadata.

    Raises:
        NotFound: No such credential in the scope.
    """
    row = await conn.fetchrow(_SELECT_ONE, tenant, environment, uuid.UUID(credential_id))
    if row is None:
        raise NotFound(f"credential {credential_id} not found")
    return _record(row)


async def rotate_credential(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    credential_id: str,
    *,
    credential: ValidatedCredential,
    keyring: Keyring,
) -> dict[str, Any]:
    """Replace a live credential's secret (new data key, current KEK, new fingerprint); same id.

    Raises:
        NotFound: No such credential in the scope.
        ConflictError: It is revoked, or ``credential.kind`` is not its kind.
    """
    key = uuid.UUID(credential_id)
    async with conn.transaction():
        row = await conn.fetchrow(_LOCK_ONE, tenant, environment, key)
        if row is None:
            raise NotFound(f"credential {credential_id} not found")
        if row["revoked_at"] is not None:
            raise ConflictError(f"credential {credential_id} is revoked")
        if row["kind"] != credential.kind:
            raise ConflictError(f"credential {credential_id} is of another kind")
        fp, sealed = _seal(keyring, credential, credential_id)
        updated = await conn.fetchrow(
            _ROTATE,
            tenant,
            environment,
            key,
            credential.config,
            fp,
            sealed.kek_id,
            sealed.wrapped_dek,
            sealed.nonce,
            sealed.ciphertext,
        )
    return _record(updated)


async def revoke_credential(conn: asyncpg.Connection, tenant: str, environment: str, credential_id: str) -> None:
    """Revoke a credential: destroy its sealed parts, delete its bindings (and, for
    ``oauth_authorization_code``, every user's tokens, pending connects and registered
    clients), keep its metadata.

    Revoking a revoked credential changes nothing.

    Raises:
        NotFound: No such credential in the scope.
    """
    key = uuid.UUID(credential_id)
    async with conn.transaction():
        if await conn.fetchval(_REVOKE, tenant, environment, key) is None:
            raise NotFound(f"credential {credential_id} not found")
        await conn.execute(_DELETE_BINDINGS_OF, tenant, environment, key)
        await oauth_users.delete_for_credential(conn, tenant, environment, str(key))


async def open_credential(
    conn: asyncpg.Connection, tenant: str, environment: str, credential_id: str, keyring: Keyring
) -> SecretFields:
    """Decrypt a live credential's secret fields: for injecting them upstream, never for an API answer.

    Raises:
        NotFound: No live credential with that id in the scope.
        CredentialDecryptError: Its KEK is not in ``keyring``, or a stored part was altered.
    """
    row = await conn.fetchrow(_SELECT_SEALED, tenant, environment, uuid.UUID(credential_id))
    if row is None:
        raise NotFound(f"credential {credential_id} not found")
    sealed = Sealed(row["kek_id"], row["wrapped_dek"], row["nonce"], row["ciphertext"])
    return SecretFields.from_bytes(open_sealed(keyring, sealed, credential_id=credential_id, kind=row["kind"]))


# The per-user OAuth rows (0007): each sealed under its credential's id like a credential, so
# its data key re-wraps with the credential id alone (the label in the secret's associated
# data is not needed to unwrap). Keyed by each table's row identity; a pending connect by its
# handle, which is a bearer and so is never reported (its credential, server and subject are).
_OAUTH_TABLES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "credential_user_tokens",
        ("credential_id", "subject_issuer", "subject_sub"),
        ("credential_id", "subject_issuer", "subject_sub"),
    ),
    ("oauth_connects", ("handle",), ("credential_id", "server", "subject_issuer", "subject_sub")),
    ("credential_oauth_clients", ("credential_id", "issuer"), ("credential_id", "issuer", "client_id")),
)
"""(table, key columns within the scope, columns naming a failed row in the report)."""


def _oauth_sql(table: str, key: tuple[str, ...], shown: tuple[str, ...]) -> tuple[str, str, str, str]:
    """The list, lock, update and count statements of one sealed per-user OAuth table."""
    where = " AND ".join(f"{c} = ${i}" for i, c in enumerate(key, start=3))
    n = len(key) + 3
    cols = ", ".join(dict.fromkeys((*key, *shown)))
    # Identifiers are this module's constants, never input; values are bind parameters.
    listing = (
        f"SELECT {', '.join(key)} FROM {table} WHERE tenant = $1 AND environment = $2"  # noqa: S608
        f" AND kek_id IS NOT NULL AND kek_id <> $3 ORDER BY {', '.join(key)}"
    )
    lock = (
        f"SELECT {cols}, kek_id, wrapped_dek, nonce, ciphertext FROM {table}"  # noqa: S608
        f" WHERE tenant = $1 AND environment = $2 AND {where} AND kek_id IS NOT NULL AND kek_id <> ${n} FOR UPDATE"
    )
    update = (
        f"UPDATE {table} SET kek_id = ${n}, wrapped_dek = ${n + 1}"  # noqa: S608
        f" WHERE tenant = $1 AND environment = $2 AND {where}"
    )
    count = (
        f"SELECT kek_id, count(*) AS n FROM {table}"  # noqa: S608
        " WHERE tenant = $1 AND environment = $2 AND kek_id IS NOT NULL GROUP BY kek_id"
    )
    return listing, lock, update, count


def _failed_row(shown: tuple[str, ...], row: asyncpg.Record) -> dict[str, str]:
    return {c: str(row[c]) for c in shown}


async def _rewrap_oauth_table(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    keyring: Keyring,
    table: str,
    key: tuple[str, ...],
    shown: tuple[str, ...],
) -> dict[str, Any]:
    current = keyring.current.id
    listing, lock, update, count = _oauth_sql(table, key, shown)
    rows = await conn.fetch(listing, tenant, environment, current)
    rewrapped, failed = 0, []
    for ident in rows:
        values = [ident[c] for c in key]
        async with conn.transaction():
            row = await conn.fetchrow(lock, tenant, environment, *values, current)
            if row is None:  # replaced (new tokens, a new connect state), deleted or re-wrapped since
                continue
            sealed = Sealed(row["kek_id"], row["wrapped_dek"], row["nonce"], row["ciphertext"])
            try:
                fresh = rewrap(keyring, sealed, credential_id=str(row["credential_id"]))
            except CredentialDecryptError as exc:
                log.warning("%s re-wrap skipped: %s", table, exc)
                failed.append(_failed_row(shown, row))
                continue
            await conn.execute(update, tenant, environment, *values, fresh.kek_id, fresh.wrapped_dek)
            rewrapped += 1
    by_kek = {r["kek_id"]: r["n"] for r in await conn.fetch(count, tenant, environment)}
    return {"rewrapped": rewrapped, "failed": failed, "by_kek": by_kek}


async def rewrap_all(conn: asyncpg.Connection, tenant: str, environment: str, keyring: Keyring) -> dict[str, Any]:
    """Re-wrap the data key of every sealed row of the scope under ``keyring.current``, online:
    live credentials, and the per-user OAuth rows of ``0007_oauth_user_tokens.sql`` (users'
    tokens, pending connects' PKCE verifiers, registered clients' secrets).

    Row by row, each in its own short transaction holding only that row's lock, so the API,
    the broker and the OAuth flows (and a concurrent rotation) keep working; a row already
    under the current KEK (rotated, or sealed anew since the list was read) is skipped. The
    secret's nonce and ciphertext are unchanged. A row whose KEK is not in the keyring (or
    whose wrapped key was altered) is left as it is and reported in ``failed``. Safe to
    repeat. ``conn`` must not be inside a transaction.

    Returns:
        ``{"current_kek_id", "rewrapped": int, "failed": [credential id, ...], "by_kek":
        {kek_id: live credentials under it, after the run}, "oauth_users": {table: {"rewrapped":
        int, "failed": [row identity], "by_kek": {kek_id: sealed rows, after the run}}},
        "remaining": int}``. The top-level ``rewrapped``/``failed``/``by_kek`` count the
        ``credentials`` table (as before); ``oauth_users`` has one entry per table:
        ``credential_user_tokens`` (a failed row named ``{"credential_id", "subject_issuer",
        "subject_sub"}``), ``oauth_connects`` (``{"credential_id", "server", "subject_issuer",
        "subject_sub"}``: never the handle, a bearer) and ``credential_oauth_clients``
        (``{"credential_id", "issuer", "client_id"}``). ``remaining`` is the number of sealed
        rows of all four tables still under another KEK after the run: 0 means the previous
        KEKs can be retired.
    """
    current = keyring.current.id
    ids = [r["id"] for r in await conn.fetch(_TO_REWRAP, tenant, environment, current)]
    rewrapped, failed = 0, []
    for key in ids:
        async with conn.transaction():
            row = await conn.fetchrow(_LOCK_SEALED, tenant, environment, key, current)
            if row is None:  # rotated, revoked or re-wrapped since the list was read
                continue
            sealed = Sealed(row["kek_id"], row["wrapped_dek"], row["nonce"], row["ciphertext"])
            try:
                fresh = rewrap(keyring, sealed, credential_id=str(key))
            except CredentialDecryptError as exc:
                log.warning("credential re-wrap skipped: %s", exc)
                failed.append(str(key))
                continue
            await conn.execute(_SET_WRAP, key, fresh.kek_id, fresh.wrapped_dek)
            rewrapped += 1
    by_kek = {r["kek_id"]: r["n"] for r in await conn.fetch(_COUNT_BY_KEK, tenant, environment)}
    oauth = {
        table: await _rewrap_oauth_table(conn, tenant, environment, keyring, table, key_cols, shown)
        for table, key_cols, shown in _OAUTH_TABLES
    }
    remaining = sum(n for kek, n in by_kek.items() if kek != current) + sum(
        n for part in oauth.values() for kek, n in part["by_kek"].items() if kek != current
    )
    return {
        "current_kek_id": current,
        "rewrapped": rewrapped,
        "failed": failed,
        "by_kek": by_kek,
        "oauth_users": oauth,
        "remaining": remaining,
    }


async def create_binding(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    *,
    server: str,
    subject_kind: str,
    subject_value: str | None,
    credential_id: str,
    created_by: str,
) -> dict[str, Any]:
    """Bind (server, subject selector) in the scope to a live credential; the server requires a
    credential from then on (``mcp_servers.requires_credential``).

    Returns:
        ``{"id", "tenant", "environment", "server", "subject": {"kind", "value"}, "credential_id",
        "created_by", "created_at"}``.

    Raises:
        NotFound: No such server or credential in the scope.
        ConflictError: The credential is revoked, or the server already has a binding for this selector.
    """
    key = uuid.UUID(credential_id)
    async with conn.transaction():
        transport = await conn.fetchval(_SERVER_EXISTS, tenant, environment, server)
        if transport is None:
            raise NotFound(f"server {server!r} not found")
        state = await conn.fetchrow(_SHARE_CREDENTIAL, tenant, environment, key)
        if state is None:
            raise NotFound(f"credential {credential_id} not found")
        if state["revoked_at"] is not None:
            raise ConflictError(f"credential {credential_id} is revoked")
        if (state["kind"] == "stdio_env") != (transport == "stdio"):
            # A stdio process reads only its environment; an HTTP upstream only headers and query.
            raise RequestRejected(
                f"credential_id: a {state['kind']} credential cannot authenticate a {transport} server"
                " (stdio servers take stdio_env credentials, HTTP servers every other kind)"
            )
        with map_db_errors(f"a binding of server {server!r} for this subject"):
            row = await conn.fetchrow(
                _INSERT_BINDING, uuid.uuid4(), tenant, environment, server, subject_kind, subject_value, key, created_by
            )
        # A bound server requires a credential from now on, even once its bindings are gone.
        await conn.execute(_REQUIRE_CREDENTIAL, tenant, environment, server)
    return _binding_record(row)


async def list_bindings(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    *,
    server: str | None = None,
    credential_id: str | None = None,
) -> list[dict[str, Any]]:
    """Return the scope's bindings (optionally of one server and/or credential), by server and selector."""
    key = uuid.UUID(credential_id) if credential_id is not None else None
    return [_binding_record(r) for r in await conn.fetch(_SELECT_BINDINGS, tenant, environment, server, key)]


async def load_bindings(conn: asyncpg.Connection, tenant: str, environment: str) -> list[Binding]:
    """Return the scope's bindings as :class:`~gateway.credentials.Binding` for :func:`select_binding`."""
    return [
        Binding(
            id=str(r["id"]),
            tenant=r["tenant"],
            environment=r["environment"],
            server=r["server"],
            subject_kind=r["subject_kind"],
            subject_value=r["subject_value"],
            credential_id=str(r["credential_id"]),
        )
        for r in await conn.fetch(_SELECT_BINDINGS, tenant, environment, None, None)
    ]


async def delete_binding(conn: asyncpg.Connection, tenant: str, environment: str, binding_id: str) -> None:
    """Delete one binding.

    Raises:
        NotFound: No such binding in the scope.
    """
    if await conn.fetchval(_DELETE_BINDING, tenant, environment, uuid.UUID(binding_id)) is None:
        raise NotFound(f"binding {binding_id} not found")


_PROJECTION_BINDINGS = """
SELECT b.id, b.server, b.subject_kind, b.subject_value, c.id AS credential_id, c.kind, c.fingerprint
FROM credential_bindings b JOIN credentials c
    ON c.tenant = b.tenant AND c.environment = b.environment AND c.id = b.credential_id
WHERE b.tenant = $1 AND b.environment = $2 AND c.revoked_at IS NULL
ORDER BY b.server, b.id
"""
_RESOLVABLE = """
SELECT b.server, c.id AS credential_id, c.kind, c.config, c.fingerprint
FROM credential_bindings b JOIN credentials c
    ON c.tenant = b.tenant AND c.environment = b.environment AND c.id = b.credential_id
WHERE b.tenant = $1 AND b.environment = $2 AND b.id = $3 AND c.revoked_at IS NULL
"""
_INSERT_USE = """
INSERT INTO credential_uses (tenant, environment, credential_id, binding_id, server, dataplane_id,
                             subject_issuer, subject_sub, outcome, error_category)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""
_TOUCH = "UPDATE credentials SET last_used_at = now() WHERE tenant = $1 AND environment = $2 AND id = $3"
_SELECT_USES = """
SELECT binding_id, server, dataplane_id, subject_issuer, subject_sub, outcome, error_category, at
FROM credential_uses WHERE tenant = $1 AND environment = $2 AND credential_id = $3
ORDER BY at DESC, id DESC LIMIT $4
"""


async def projection_bindings(
    conn: asyncpg.Connection, tenant: str, environment: str
) -> dict[str, list[dict[str, Any]]]:
    """The live bindings of the scope by server, as the projection carries them (no secret).

    Returns:
        ``{server: [{"id", "subject": {"kind", "value"}, "credential": {"id", "kind",
        "version"}}, ...]}``; ``version`` is the credential's fingerprint (it changes with the
        secret, so a rotation reaches the data planes' caches).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for r in await conn.fetch(_PROJECTION_BINDINGS, tenant, environment):
        out.setdefault(r["server"], []).append(
            {
                "id": str(r["id"]),
                "subject": {"kind": r["subject_kind"], "value": r["subject_value"]},
                "credential": {"id": str(r["credential_id"]), "kind": r["kind"], "version": r["fingerprint"]},
            }
        )
    return out


async def resolvable(conn: asyncpg.Connection, tenant: str, environment: str, binding_id: str) -> dict[str, Any] | None:
    """The live binding ``binding_id`` with its credential's metadata: ``{"server",
    "credential_id", "kind", "config", "fingerprint"}``, or None (unknown, or revoked)."""
    row = await conn.fetchrow(_RESOLVABLE, tenant, environment, uuid.UUID(binding_id))
    if row is None:
        return None
    rec = dict(row)
    rec["credential_id"] = str(rec["credential_id"])
    return rec


async def record_use(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    *,
    credential_id: str,
    binding_id: str | None,
    server: str,
    dataplane_id: str,
    subject: tuple[str, str],
    outcome: str,
    error_category: str | None = None,
) -> None:
    """Audit one resolution (``resolved``/``refused``/``failed``); a resolved one also sets ``last_used_at``."""
    key = uuid.UUID(credential_id)
    async with conn.transaction():
        await conn.execute(
            _INSERT_USE,
            tenant,
            environment,
            key,
            uuid.UUID(binding_id) if binding_id else None,
            server,
            dataplane_id,
            subject[0],
            subject[1],
            outcome,
            error_category,
        )
        if outcome == "resolved":
            await conn.execute(_TOUCH, tenant, environment, key)


async def list_uses(
    conn: asyncpg.Connection, tenant: str, environment: str, credential_id: str, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest ``limit`` resolutions of a credential (``binding_id``, ``server``,
    ``dataplane_id``, ``subject``: ``{"issuer", "sub"}``, ``outcome``, ``error_category``, ``at``)."""
    rows = await conn.fetch(_SELECT_USES, tenant, environment, uuid.UUID(credential_id), limit)
    return [
        {
            "binding_id": str(r["binding_id"]) if r["binding_id"] else None,
            "server": r["server"],
            "dataplane_id": r["dataplane_id"],
            "subject": {"issuer": r["subject_issuer"], "sub": r["subject_sub"]},
            "outcome": r["outcome"],
            "error_category": r["error_category"],
            "at": r["at"].isoformat(),
        }
        for r in rows
    ]
