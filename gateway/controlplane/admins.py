"""Admin API for admin identity: who am I, role grants, the control-plane audit trail, and the
approval comment every approval requires (docs/admin-identity.md).

* ``GET /v1/admin/whoami`` -> ``{"subject", "issuer", "roles", "bootstrap", "decision_id"}``.
* ``GET /v1/admin/roles`` -> ``{"items": [grant, ...]}``; ``POST /v1/admin/roles``
  ``{"subject", "issuer"?, "role", "comment"}`` -> 201 grant (409 when held);
  ``DELETE /v1/admin/roles/{id}`` -> the revoked grant. ``issuer`` defaults to the primary
  admin issuer; ``role`` is one of :data:`~gateway.controlplane.actor.ROLES`.
* The control-plane trail itself (``GET /v1/audit/control-plane``, its filters and its export)
  is served by :mod:`gateway.controlplane.audit`, with the runtime trail.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import JSONResponse, check_text, read_json
from gateway.controlplane.actor import ROLES, actor_of
from gateway.controlplane.middleware.admin import record_change
from gateway.db import admin as db_admin
from gateway.errors import AdminForbidden, NotFound, RequestRejected

__all__ = ["approval_comment", "create_grant", "delete_grant", "list_grants", "whoami"]

MAX_COMMENT = 2000


def approval_comment(body: Any, what: str = "an approval") -> str:
    """The required ``comment`` of an approval (or grant) body (1..2000 characters, not blank).

    Raises:
        RequestRejected: Missing, not a string, blank or too long (400 naming ``comment``).
    """
    value = body.get("comment") if isinstance(body, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise RequestRejected(f'comment: {what} needs a comment, e.g. {{"comment": "reviewed in PR 42"}}')
    return check_text(value.strip(), "comment", max_length=MAX_COMMENT)


async def whoami(request: Request) -> Response:
    """``GET /v1/admin/whoami``: the caller as the control plane sees it."""
    actor = actor_of(request)
    return JSONResponse(
        {
            "subject": actor.subject,
            "issuer": actor.issuer,
            "roles": sorted(actor.roles),
            "bootstrap": actor.bootstrap,
            "decision_id": actor.decision_id,
        }
    )


async def list_grants(request: Request) -> Response:
    """``GET /v1/admin/roles`` -> every role grant, oldest first."""
    d = deps(request)
    async with d.pool.acquire() as conn:
        items = await db_admin.list_grants(conn, d.config.tenant, d.config.environment)
    return JSONResponse({"items": items})


async def create_grant(request: Request) -> Response:
    """``POST /v1/admin/roles`` ``{"subject", "issuer"?, "role", "comment"}`` -> 201 the grant.

    Errors: 400 naming the field; 409 the subject already holds the role.
    """
    d = deps(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - {"subject", "issuer", "role", "comment"}:
        raise RequestRejected('body must be {"subject", "issuer"?, "role", "comment"}')
    subject = body.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        raise RequestRejected("subject must be a non-empty string")
    issuer = body.get("issuer", d.config.admin.jwt_issuer)
    if not isinstance(issuer, str) or not issuer:
        raise RequestRejected("issuer must be a non-empty string (no admin issuer is configured to default to)")
    role = body.get("role")
    if role not in ROLES:
        raise RequestRejected(f"role must be one of {', '.join(ROLES)}")
    comment = approval_comment(body, "a role grant")
    actor = actor_of(request)
    if not actor.bootstrap and (issuer, subject) == (actor.issuer, actor.subject):
        raise AdminForbidden("a role cannot be granted to oneself: ask another admin")
    async with d.pool.acquire() as conn:
        grant = await db_admin.grant_role(
            conn,
            d.config.tenant,
            d.config.environment,
            issuer=check_text(issuer, "issuer", max_length=2048),
            subject=check_text(subject, "subject", max_length=1024),
            role=str(role),
            granted_by=actor.name,
            comment=comment,
        )
    record_change(request, kind="role_grant", resource_id=grant["id"], after=grant, comment=comment)
    return JSONResponse(grant, status_code=201)


async def delete_grant(request: Request) -> Response:
    """``DELETE /v1/admin/roles/{id}`` -> the revoked grant; 404 unknown."""
    d = deps(request)
    grant_id = request.path_params["id"]
    try:
        uuid.UUID(grant_id)
    except ValueError:
        raise NotFound("no such role grant") from None
    async with d.pool.acquire() as conn:
        grant = await db_admin.delete_grant(conn, d.config.tenant, d.config.environment, grant_id)
    record_change(request, kind="role_grant", resource_id=grant["id"], before=grant)
    return JSONResponse(grant)
