"""Authorization and audit of every admin request (after :class:`BearerAuthMiddleware` has
attached the caller's :class:`~gateway.controlplane.actor.Actor`).

For an admin path that a route serves (:func:`gateway.controlplane.authz.action_for`):

1. the control plane's OPA decides on ``{actor, request: {method, path, action}}``
   (:mod:`gateway.controlplane.authz`); the actor gets the decision id;
2. refused: 403 ``admin_forbidden`` with the policy's reasons; OPA unavailable: 503
   ``policy_unavailable`` (fail closed);
3. either way, and after the handler ran, one row of ``control_plane_audit``: who, the
   action, the decision id and reasons, the HTTP status, and for a change what the handler
   recorded with :func:`record_change` (resource, comment, SHA-256 of its canonical JSON
   before and after).

Paths no route serves are passed on untouched (404/405 from the router, not audited).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import Config
from gateway.controlplane._http import JSONResponse, error_body, request_id
from gateway.controlplane.actor import Actor, actor_of
from gateway.controlplane.authz import Decision, action_for, shared_engine
from gateway.controlplane.middleware.auth import PUBLIC_PATHS, PUBLIC_PREFIXES, is_internal_path
from gateway.db import admin as db_admin
from gateway.db.pool import DATABASE_DOWN
from gateway.errors import AdminAuthFailed, AdminForbidden, GatewayError

__all__ = ["AdminAuthorizationMiddleware", "authorize_resource", "canonical_sha256", "record_change"]

log = logging.getLogger(__name__)


def canonical_sha256(value: Any) -> str | None:
    """Hex SHA-256 of ``value``'s canonical JSON (sorted keys, UTF-8, no spaces); None for None."""
    if value is None:
        return None
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()


def record_change(
    request: Request,
    *,
    kind: str,
    resource_id: str,
    before: Any = None,
    after: Any = None,
    comment: str | None = None,
) -> None:
    """Attach what an admin request changed to its audit row (written by the middleware)."""
    state = request.scope.setdefault("state", {})
    state["change"] = {
        "resource_kind": kind,
        "resource_id": resource_id,
        "comment": comment,
        "before_sha256": canonical_sha256(before),
        "after_sha256": canonical_sha256(after),
    }


def _input(actor: Actor, method: str, path: str, action: str, resource: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "actor": {
            "subject": actor.subject,
            "issuer": actor.issuer,
            "name": actor.name,
            "roles": sorted(actor.roles),
            "bootstrap": actor.bootstrap,
        },
        "request": {"method": method, "path": path, "action": action},
    }
    if resource is not None:
        doc["resource"] = resource
    return doc


async def authorize_resource(request: Request, *, kind: str, resource_id: str, author: str) -> Decision:
    """Ask the control plane's policy again, now naming the resource (approvals: four-eyes).

    Raises:
        AdminForbidden: The policy refused (its reasons in the message).
        PolicyUnavailable: The control plane's OPA is down.
    """
    actor = actor_of(request)
    config: Config = request.app.state.config
    action = action_for(request.method, _relative(request.scope)) or "unknown"
    resource = {"kind": kind, "id": resource_id, "author": author}
    decision = await shared_engine(config).decide(_input(actor, request.method, request.url.path, action, resource))
    state = request.scope.setdefault("state", {})
    state["actor"] = dataclasses.replace(actor, decision_id=decision.decision_id)
    if not decision.allow:
        state["refusal"] = decision
        raise AdminForbidden("; ".join(decision.reasons) or "refused by the control-plane policy")
    return decision


def _relative(scope: Scope) -> str:
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class AdminAuthorizationMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, *, config: Config, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self._config = config
        self._routes = tuple(routes)

    def _served(self, scope: Scope) -> bool:
        """True when a route matches the request's path (any method)."""
        return any(route.matches(scope)[0] != Match.NONE for route in self._routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _relative(scope)
        method = scope["method"]
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        action = None if public or is_internal_path(path) else action_for(method, path)
        if action is None and not public and not is_internal_path(path) and self._served(scope):
            action = "unknown"  # a route without an action: the policy refuses it (fail closed)
        if action is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        actor = state.get("actor")
        if not isinstance(actor, Actor):  # never reached past BearerAuthMiddleware; refuse, never assume
            anonymous = AdminAuthFailed("a valid bearer token is required")
            await JSONResponse(error_body(anonymous, request_id(scope)), status_code=anonymous.status_code)(
                scope, receive, send
            )
            return
        status = 500
        decision: Decision | None = None
        try:
            decision = await shared_engine(self._config).decide(_input(actor, method, path, action, None))
        except GatewayError as exc:
            status = exc.status_code
            response = JSONResponse(error_body(exc, request_id(scope)), status_code=exc.status_code)
            await response(scope, receive, send)
            await self._audit(scope, actor, action, method, path, None, status)
            return
        actor = dataclasses.replace(actor, decision_id=decision.decision_id)
        state["actor"] = actor
        if not decision.allow:
            refused = AdminForbidden("; ".join(decision.reasons) or "refused by the control-plane policy")
            response = JSONResponse(error_body(refused, request_id(scope)), status_code=refused.status_code)
            await response(scope, receive, send)
            await self._audit(scope, actor, action, method, path, decision, refused.status_code)
            return

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            final = state.get("actor")
            refusal = state.get("refusal")
            await self._audit(
                scope,
                final if isinstance(final, Actor) else actor,
                action,
                method,
                path,
                refusal if isinstance(refusal, Decision) else decision,
                status,
            )

    async def _audit(
        self,
        scope: Scope,
        actor: Actor,
        action: str,
        method: str,
        path: str,
        decision: Decision | None,
        status: int,
    ) -> None:
        state = scope.get("state") or {}
        pool, trail = state.get("cp_pool"), state.get("cp_audit")
        if pool is None or trail is None:
            return
        change = state.get("change") or {}
        row = db_admin.AuditRow(
            request_id=request_id(scope) or None,
            actor=actor.name,
            actor_issuer=actor.issuer,
            roles=sorted(actor.roles),
            action=action,
            method=method,
            path=path,
            decision_id=actor.decision_id if decision is not None else None,
            allowed=bool(decision and decision.allow),
            reasons=decision.reasons if decision is not None else ("policy_unavailable",),
            status=status,
            **change,
        )
        try:
            # Shielded: a client that disconnects (cancelling the request) does not lose the row.
            with anyio.CancelScope(shield=True):
                await db_admin.record_audit(pool, trail.partitions, self._config.tenant, self._config.environment, row)
        except DATABASE_DOWN as exc:
            # The database is down: the request itself could not change anything (it answered
            # 503 database_unavailable, or needed no database); one line, no traceback.
            log.warning(
                "control-plane audit row lost (database unavailable, %s): %s %s by %s (status %s)",
                type(exc).__name__,
                method,
                path,
                actor.name,
                status,
            )
        except Exception:  # the request is done; losing the row must be loud
            log.exception("control-plane audit row lost: %s %s by %s (status %s)", method, path, actor.name, status)
