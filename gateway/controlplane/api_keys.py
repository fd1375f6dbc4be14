"""Admin API for API keys: credentials of machine agents on the data plane (issue 8).

* ``POST /v1/api-keys`` ``{"subject", "roles"?, "expires_at"? | "ttl"?, "description"?}`` ->
  201 with the key, shown this once (``Cache-Control: no-store``);
* ``GET /v1/api-keys`` -> ``{"items": [metadata, ...]}``;
* ``DELETE /v1/api-keys/{id}`` -> 200 metadata (``status: revoked``) and the
  ``projection_version`` that no longer carries the key.

A key is ``gwk_<id>_<secret>`` (:mod:`gateway.dataplane.api_keys`): 16 hex digits of id, 43
base64url characters of secret (256 bits from :mod:`secrets`). Only its argon2id hash
(argon2-cffi, RFC 9106; m = 19 MiB, t = 2, p = 1) is stored and published in the projection.
Creating and revoking a key compile a new projection in the same transaction, so data planes
learn of it through their projection long poll. Every key expires: ``expires_at`` (RFC 3339)
or ``ttl`` (seconds), default :data:`DEFAULT_TTL`, at most :data:`MAX_TTL` ahead.
``created_by``/``revoked_by`` record :func:`gateway.controlplane.actor.actor_of`.
"""

from __future__ import annotations

import logging
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from argon2 import PasswordHasher, Type
from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import JSONResponse, check_text, parse_rfc3339, read_json
from gateway.controlplane.actor import actor_of
from gateway.controlplane.middleware.admin import record_change
from gateway.controlplane.projection import mutate_and_compile
from gateway.db import api_keys as db_api_keys
from gateway.errors import RequestRejected

__all__ = ["DEFAULT_TTL", "MAX_TTL", "create_api_key", "list_api_keys", "new_key", "revoke_api_key"]

log = logging.getLogger(__name__)

DEFAULT_TTL = 90 * 24 * 3600
"""Seconds a key lives when the request names no expiry (90 days)."""
MAX_TTL = 366 * 24 * 3600
"""Farthest expiry a key may have, in seconds from now (366 days): rotate keys at least yearly."""
MAX_ROLES = 64
MAX_ROLE = 256
_FIELDS = frozenset({"subject", "roles", "expires_at", "ttl", "description"})
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1, type=Type.ID)
"""argon2id at the OWASP-recommended minimum (19 MiB, 2 passes): about 50 ms a check. The key
holds 256 random bits, so the hash only has to make a stolen table useless, not slow down
guessing of a weak secret; the parameters travel in the PHC string."""


def new_key() -> tuple[str, str]:
    """A fresh ``(key id, key)``: ``key`` is ``gwk_<id>_<secret>`` with a 256-bit secret."""
    key_id = secrets.token_hex(8)
    return key_id, f"gwk_{key_id}_{secrets.token_urlsafe(32)}"


def _expiry(body: dict[str, Any], now: datetime) -> datetime:
    if "expires_at" in body and "ttl" in body:
        raise RequestRejected("give expires_at or ttl, not both")
    if "expires_at" in body:
        expires = parse_rfc3339(body["expires_at"], field="expires_at")
    else:
        ttl = body.get("ttl", DEFAULT_TTL)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise RequestRejected("ttl must be a positive whole number of seconds")
        expires = now + timedelta(seconds=min(ttl, MAX_TTL + 1))
    if expires <= now:
        raise RequestRejected("expires_at must be in the future")
    if expires > now + timedelta(seconds=MAX_TTL):
        raise RequestRejected(f"the expiry may be at most {MAX_TTL // 86400} days ahead")
    return expires


def _roles(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ROLES:
        raise RequestRejected(f"roles must be a list of at most {MAX_ROLES} role names")
    for role in value:
        if not isinstance(role, str) or not role.strip() or len(role) > MAX_ROLE or "\x00" in role:
            raise RequestRejected(f"roles must be non-blank strings of at most {MAX_ROLE} characters")
    return list(dict.fromkeys(value))


async def create_api_key(request: Request) -> Response:
    """``POST /v1/api-keys`` -> 201 ``{"id", "key", "subject", "roles", "description",
    "created_by", "created_at", "expires_at", "revoked_at": null, "revoked_by": null,
    "status": "active", "projection_version"}``.

    ``key`` appears in this answer only; store it now. Errors: 400 naming the field.
    """
    d = deps(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - _FIELDS or "subject" not in body:
        raise RequestRejected('body must be {"subject", "roles"?, "expires_at"? or "ttl"?, "description"?}')
    subject = body["subject"]
    if not isinstance(subject, str) or not subject.strip():
        raise RequestRejected("subject must be a non-blank string")
    check_text(subject, "subject")
    description = body.get("description", "")
    if not isinstance(description, str):
        raise RequestRejected("description must be a string")
    check_text(description, "description")
    roles = _roles(body.get("roles"))
    expires_at = _expiry(body, datetime.now(UTC))
    key_id, key = new_key()
    hashed = await anyio.to_thread.run_sync(_HASHER.hash, key)
    actor = actor_of(request).name
    record, stored = await mutate_and_compile(
        d.pool,
        d.config,
        d.notifier,
        lambda conn: db_api_keys.create_api_key(
            conn,
            d.config.tenant,
            d.config.environment,
            key_id=key_id,
            subject=subject,
            roles=roles,
            description=description,
            secret_hash=hashed,
            created_by=actor,
            expires_at=expires_at,
        ),
    )
    log.info("api key %s created by %s for subject %s, expires %s", key_id, actor, subject, record["expires_at"])
    record_change(request, kind="api_key", resource_id=key_id, after=record)  # metadata: never the key
    shown = {"id": key_id, "key": key, **record, "projection_version": stored.version}
    return JSONResponse(shown, status_code=201, headers={"cache-control": "no-store"})


async def list_api_keys(request: Request) -> Response:
    """``GET /v1/api-keys`` -> ``{"items": [metadata, ...]}`` oldest first, with ``status``
    ``active``, ``expired`` or ``revoked``; never a key or a hash."""
    d = deps(request)
    async with d.pool.acquire() as conn:
        items = await db_api_keys.list_api_keys(conn, d.config.tenant, d.config.environment)
    return JSONResponse({"items": items})


async def revoke_api_key(request: Request) -> Response:
    """``DELETE /v1/api-keys/{id}`` -> 200 metadata (``status: revoked``, ``revoked_by``) with
    ``projection_version``: data planes refuse the key once they run that projection.

    Errors: 400 malformed id, 404 unknown, 409 already revoked.
    """
    d = deps(request)
    key_id = request.path_params["id"]
    if not _KEY_ID.fullmatch(key_id):
        raise RequestRejected("id must be an api key id (16 lowercase hex digits)")
    actor = actor_of(request).name
    record, stored = await mutate_and_compile(
        d.pool,
        d.config,
        d.notifier,
        lambda conn: db_api_keys.revoke_api_key(conn, d.config.tenant, d.config.environment, key_id, revoked_by=actor),
    )
    log.info("api key %s revoked by %s (projection %s)", key_id, actor, stored.version)
    record_change(request, kind="api_key", resource_id=key_id, after=record)
    return JSONResponse({**record, "projection_version": stored.version})
