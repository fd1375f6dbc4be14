"""Admin API for upstream credentials (write-only) and their bindings.

No answer ever carries secret material: a credential is shown as metadata (``id``, ``name``,
``kind``, non-secret ``config``, ``fingerprint``, ``kek_id``, ``created_by``, timestamps,
``status``). Bad input is a 400 naming the field, never echoing a value. Without a
key-encryption key (``GATEWAY_CREDENTIALS_KEK_FILE`` / ``GATEWAY_CREDENTIALS_KEK``) every
route here answers 503 ``credentials_unavailable``. See docs/credentials.md.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane import oauth_users
from gateway.controlplane._deps import deps
from gateway.controlplane._http import JSONResponse, check_text, read_json
from gateway.controlplane.actor import actor_of
from gateway.controlplane.middleware.admin import record_change
from gateway.controlplane.projection import mutate_and_compile
from gateway.credentials import CredentialsDisabled, Keyring, validate_credential, validate_rotation
from gateway.credentials.bindings import SUBJECT_KINDS
from gateway.db import credentials as db_credentials
from gateway.errors import RequestRejected

__all__ = [
    "create_binding",
    "create_credential",
    "delete_binding",
    "get_credential",
    "list_bindings",
    "list_credentials",
    "list_uses",
    "revoke_credential",
    "rewrap_credentials",
    "rotate_credential",
    "uuid_text",
]

log = logging.getLogger(__name__)

CREDENTIAL_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_.-]{0,126}[a-z0-9])?")
"""Credential names (used with ``fullmatch``): 1-128 of ``[a-z0-9_.-]``, alphanumeric at both ends."""
SERVER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")
UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_SUBJECT = 1024
"""Longest subject selector value (a ``sub``, role or client id), in characters."""
"""``created_by`` of what the admin API creates: the admin token is its one principal."""
_CREATE_FIELDS = frozenset({"name", "kind", "config", "secret"})
_BINDING_FIELDS = frozenset({"server", "subject", "credential_id"})


def keyring(request: Request) -> Keyring:
    """The control plane's keyring (``app.state.credentials_keyring``).

    Raises:
        CredentialsDisabled: No KEK is configured (503, naming the variables to set).
    """
    ring = getattr(request.app.state, "credentials_keyring", None)
    if ring is None:
        raise CredentialsDisabled(
            "the credentials API is disabled: no key-encryption key is configured; set "
            "GATEWAY_CREDENTIALS_KEK_FILE (or GATEWAY_CREDENTIALS_KEK) and restart"
        )
    assert isinstance(ring, Keyring)
    return ring


def uuid_text(value: object, field: str) -> str:
    """``value`` as a canonical UUID string.

    Raises:
        RequestRejected: Not a UUID in 8-4-4-4-12 hex form (400 naming ``field``).
    """
    if not isinstance(value, str) or not UUID_TEXT.fullmatch(value):
        raise RequestRejected(f"{field} must be a UUID (8-4-4-4-12 hex digits)")
    return str(uuid.UUID(value))


def _name(value: object) -> str:
    if not isinstance(value, str) or not CREDENTIAL_NAME.fullmatch(value):
        raise RequestRejected("name must be 1-128 of [a-z0-9_.-], alphanumeric at both ends")
    return value


def _server(value: object, field: str) -> str:
    if not isinstance(value, str) or not SERVER_NAME.fullmatch(value) or "__" in value:
        raise RequestRejected(f"{field} must be a server name: 1-63 of [a-z0-9_-], alphanumeric at both ends")
    return value


def _shown(record: dict[str, Any], public_url: str) -> dict[str, Any]:
    """``record`` with the redirect URI an admin registers for a configured per-user OAuth client."""
    if record.get("kind") == "oauth_authorization_code":
        issuer = oauth_users.configured_issuer(record.get("config") or {})
        if issuer is not None:
            return {**record, "redirect_uri": oauth_users.redirect_uri(public_url, str(record["id"]), issuer)}
    return record


async def create_credential(request: Request) -> Response:
    """``POST /v1/credentials`` ``{"name", "kind", "config"?, "secret"}`` -> 201 metadata (no secret).

    Errors: 400 naming the field, 409 a live credential of that name exists, 503 no KEK.
    """
    ring = keyring(request)
    d = deps(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - _CREATE_FIELDS or "secret" not in body:
        raise RequestRejected('body must be {"name", "kind", "config"?, "secret"}')
    name = _name(body.get("name"))
    credential = validate_credential(body.get("kind"), body.get("config"), body["secret"])
    async with d.pool.acquire() as conn:
        record = await db_credentials.create_credential(
            conn,
            d.config.tenant,
            d.config.environment,
            name=name,
            credential=credential,
            keyring=ring,
            created_by=actor_of(request).name,
        )
    log.info("credential %s created: kind %s, fingerprint %s", record["id"], record["kind"], record["fingerprint"])
    record_change(request, kind="credential", resource_id=str(record["id"]), after=record)
    return JSONResponse(_shown(record, d.config.control_plane.public_url), status_code=201)


async def list_credentials(request: Request) -> Response:
    """``GET /v1/credentials`` -> ``{"items": [metadata, ...]}`` oldest first, revoked ones included."""
    keyring(request)
    d = deps(request)
    async with d.pool.acquire() as conn:
        items = await db_credentials.list_credentials(conn, d.config.tenant, d.config.environment)
    public = d.config.control_plane.public_url
    return JSONResponse({"items": [_shown(item, public) for item in items]})


async def get_credential(request: Request) -> Response:
    """``GET /v1/credentials/{id}`` -> metadata; 404 unknown."""
    keyring(request)
    d = deps(request)
    credential_id = uuid_text(request.path_params["id"], "id")
    async with d.pool.acquire() as conn:
        record = await db_credentials.get_credential(conn, d.config.tenant, d.config.environment, credential_id)
    return JSONResponse(_shown(record, d.config.control_plane.public_url))


async def rotate_credential(request: Request) -> Response:
    """``POST /v1/credentials/{id}/rotate`` ``{"secret"}`` -> metadata with a new ``fingerprint`` and ``rotated_at``.

    Same id, same kind and non-secret config (a map kind's names follow the new secret);
    404 unknown, 409 revoked.
    """
    ring = keyring(request)
    d = deps(request)
    credential_id = uuid_text(request.path_params["id"], "id")
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"secret"}:
        raise RequestRejected('body must be {"secret"}')
    tenant, env = d.config.tenant, d.config.environment
    async with d.pool.acquire() as conn:
        current = await db_credentials.get_credential(conn, tenant, env, credential_id)
    credential = validate_rotation(current["kind"], current["config"], body["secret"])
    # A new projection carries the new version: data planes drop the old material at once.
    record, _ = await mutate_and_compile(
        d.pool,
        d.config,
        d.notifier,
        lambda conn: db_credentials.rotate_credential(
            conn, tenant, env, credential_id, credential=credential, keyring=ring
        ),
    )
    log.info("credential %s rotated: fingerprint %s", record["id"], record["fingerprint"])
    record_change(request, kind="credential", resource_id=credential_id, before=current, after=record)
    return JSONResponse(_shown(record, d.config.control_plane.public_url))


async def revoke_credential(request: Request) -> Response:
    """``DELETE /v1/credentials/{id}`` -> 204: the secret is destroyed, its bindings deleted, metadata kept."""
    keyring(request)
    d = deps(request)
    credential_id = uuid_text(request.path_params["id"], "id")
    # The new projection lacks its bindings: data planes drop its material and sessions at once.
    await mutate_and_compile(
        d.pool,
        d.config,
        d.notifier,
        lambda conn: db_credentials.revoke_credential(conn, d.config.tenant, d.config.environment, credential_id),
    )
    tokens = (request.scope.get("state") or {}).get("cp_tokens")
    if tokens is not None:  # its OAuth tokens are dropped too
        tokens.invalidate(credential_id)
    log.info("credential %s revoked", credential_id)
    record_change(
        request, kind="credential", resource_id=credential_id, before={"id": credential_id, "status": "active"}
    )
    return Response(status_code=204)


async def rewrap_credentials(request: Request) -> Response:
    """``POST /v1/credentials/rewrap`` -> ``{"current_kek_id", "rewrapped", "failed", "by_kek"}``.

    Re-wraps every live credential's data key under the current KEK, online
    (:func:`gateway.db.credentials.rewrap_all`). ``failed`` lists the credentials whose KEK
    is not configured; once ``by_kek`` holds the current KEK only, previous KEKs can go.
    """
    ring = keyring(request)
    d = deps(request)
    async with d.pool.acquire() as conn:
        result = await db_credentials.rewrap_all(conn, d.config.tenant, d.config.environment, ring)
    log.info(
        "credentials re-wrapped under KEK %s: %d re-wrapped, %d failed",
        result["current_kek_id"],
        result["rewrapped"],
        len(result["failed"]),
    )
    record_change(request, kind="credentials_kek", resource_id=str(result["current_kek_id"]), after=result)
    return JSONResponse(result)


def _subject(value: object) -> tuple[str, str | None]:
    if not isinstance(value, dict) or set(value) - {"kind", "value"}:
        raise RequestRejected('subject must be {"kind": "user"|"role"|"client"|"everyone", "value"?}')
    kind = value.get("kind")
    if not isinstance(kind, str) or kind not in SUBJECT_KINDS:
        raise RequestRejected(f"subject.kind must be one of {', '.join(SUBJECT_KINDS)}")
    selector = value.get("value")
    if kind == "everyone":
        if selector is not None:
            raise RequestRejected("subject.value must be absent (or null) for everyone")
        return kind, None
    if not isinstance(selector, str) or not selector or len(selector) > MAX_SUBJECT or not selector.isprintable():
        raise RequestRejected(f"subject.value must be a non-empty string of at most {MAX_SUBJECT} printable characters")
    return kind, selector


async def create_binding(request: Request) -> Response:
    """``POST /v1/credential-bindings`` ``{"server", "subject": {"kind", "value"?}, "credential_id"}`` -> 201.

    404 unknown server or credential, 409 revoked credential or a binding for this server and
    selector exists.
    """
    keyring(request)
    d = deps(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != _BINDING_FIELDS:
        raise RequestRejected('body must be {"server", "subject": {"kind", "value"?}, "credential_id"}')
    server = _server(body["server"], "server")
    kind, value = _subject(body["subject"])
    credential_id = uuid_text(body["credential_id"], "credential_id")
    record, _ = await mutate_and_compile(
        d.pool,
        d.config,
        d.notifier,
        lambda conn: db_credentials.create_binding(
            conn,
            d.config.tenant,
            d.config.environment,
            server=server,
            subject_kind=kind,
            subject_value=value,
            credential_id=credential_id,
            created_by=actor_of(request).name,
        ),
    )
    record_change(request, kind="credential_binding", resource_id=str(record["id"]), after=record)
    return JSONResponse(record, status_code=201)


async def list_bindings(request: Request) -> Response:
    """``GET /v1/credential-bindings[?server=&credential_id=]`` -> ``{"items": [binding, ...]}``."""
    keyring(request)
    d = deps(request)
    params = request.query_params
    server = params.get("server")
    credential_id = params.get("credential_id")
    async with d.pool.acquire() as conn:
        items = await db_credentials.list_bindings(
            conn,
            d.config.tenant,
            d.config.environment,
            server=_server(check_text(server, "server"), "server") if server is not None else None,
            credential_id=uuid_text(credential_id, "credential_id") if credential_id is not None else None,
        )
    return JSONResponse({"items": items})


async def delete_binding(request: Request) -> Response:
    """``DELETE /v1/credential-bindings/{id}`` -> 204; 404 unknown."""
    keyring(request)
    d = deps(request)
    binding_id = uuid_text(request.path_params["id"], "id")
    await mutate_and_compile(
        d.pool,
        d.config,
        d.notifier,
        lambda conn: db_credentials.delete_binding(conn, d.config.tenant, d.config.environment, binding_id),
    )
    record_change(request, kind="credential_binding", resource_id=binding_id, before={"id": binding_id})
    return Response(status_code=204)


async def list_uses(request: Request) -> Response:
    """``GET /v1/credentials/{id}/uses[?limit=N]`` -> ``{"items": [...]}``: the newest resolutions of
    the credential by data planes (who, for whom, through which binding, outcome), newest first;
    ``limit`` 1-1000 (default 100). 404 unknown."""
    keyring(request)
    d = deps(request)
    credential_id = uuid_text(request.path_params["id"], "id")
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise RequestRejected("limit must be an integer from 1 to 1000")
    tenant, env = d.config.tenant, d.config.environment
    async with d.pool.acquire() as conn:
        await db_credentials.get_credential(conn, tenant, env, credential_id)  # 404 when unknown
        items = await db_credentials.list_uses(conn, tenant, env, credential_id, int(raw))
    return JSONResponse({"items": items})
