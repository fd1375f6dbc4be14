"""Bearer-token authentication for the admin API and the internal (OPA / data-plane) API."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import Secret
from gateway.controlplane._http import JSONResponse, error_body, request_id
from gateway.errors import AdminAuthFailed

__all__ = ["INTERNAL_PREFIXES", "PUBLIC_PATHS", "PUBLIC_PREFIXES", "BearerAuthMiddleware", "is_internal_path"]

INTERNAL_PREFIXES = ("/v1/opa/", "/v1/dataplane/")
"""Paths that take the internal token; so does exactly ``/v1/audit/events``."""
INTERNAL_PATHS = frozenset({"/v1/audit/events"})
PUBLIC_PATHS = frozenset({"/v1/openapi.json", "/v1/oauth/callback"})
"""Paths served without a token: the OpenAPI document (the API's shape, no data; the README
documents the same) and the per-user OAuth redirect URI. Exact matches only, and only for GET/HEAD."""
PUBLIC_PREFIXES = ("/v1/oauth/connect/",)
"""Per-user OAuth connect pages, opened in a user's browser (GET/HEAD only): the single-use
connect handle, then the OAuth ``state``, is their bearer (``gateway.controlplane.oauth_users``)."""


def is_internal_path(path: str) -> bool:
    """True when ``path`` (relative to the control-plane mount) is for OPA or data planes."""
    return path in INTERNAL_PATHS or path.startswith(INTERNAL_PREFIXES)


class BearerAuthMiddleware:
    """Require ``Authorization: Bearer <token>`` on every HTTP request.

    Internal paths (:data:`INTERNAL_PREFIXES`, ``/v1/audit/events``) take the internal
    token, every other path the admin token; neither token opens the other's paths.
    ``GET``/``HEAD`` of :data:`PUBLIC_PATHS` (``/v1/openapi.json``) and under
    :data:`PUBLIC_PREFIXES` (the OAuth connect pages) needs no token.
    Tokens are compared in constant time. Failure: 401 ``admin_unauthenticated``
    with ``WWW-Authenticate: Bearer``.
    """

    def __init__(self, app: ASGIApp, *, admin_token: Secret, internal_token: Secret) -> None:
        self.app = app
        self._admin = admin_token.reveal().encode()
        self._internal = internal_token.reveal().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if public and scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        expected = self._internal if is_internal_path(path) else self._admin
        presented = b""
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = token.strip()
        if not expected or not hmac.compare_digest(presented, expected):
            exc = AdminAuthFailed("a valid bearer token is required")
            response = JSONResponse(
                error_body(exc, request_id(scope)), status_code=exc.status_code, headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
