"""Bearer-token authentication: the admin API, the data planes' API and the OPA sidecars' API.

Three tokens, three sets of paths, none opening another's: the admin token the admin API;
the internal token (data planes) ``/v1/dataplane/*`` (the projection feed and the credential
broker) and ``/v1/audit/events``; the OPA token (OPA sidecars) ``/v1/opa/*`` only, so a
sidecar, or whoever reads its token file, cannot reach the broker.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import Secret
from gateway.controlplane._http import JSONResponse, error_body, request_id
from gateway.errors import AdminAuthFailed

__all__ = [
    "INTERNAL_PREFIXES",
    "OPA_PREFIX",
    "PUBLIC_PATHS",
    "PUBLIC_PREFIXES",
    "BearerAuthMiddleware",
    "is_internal_path",
    "is_opa_path",
]

OPA_PREFIX = "/v1/opa/"
"""Paths of the OPA sidecars (bundles, status, decision logs): the OPA token only."""
INTERNAL_PREFIXES = (OPA_PREFIX, "/v1/dataplane/")
"""Paths not of the admin API (:func:`is_internal_path`); under :data:`OPA_PREFIX` the OPA
token, the others and exactly ``/v1/audit/events`` the internal token."""
INTERNAL_PATHS = frozenset({"/v1/audit/events"})
PUBLIC_PATHS = frozenset({"/v1/openapi.json"})
"""Paths served without a token: the OpenAPI document (the API's shape, no data; the README
documents the same). Exact matches only, and only for GET/HEAD."""
PUBLIC_PREFIXES = ("/v1/oauth/connect/", "/v1/oauth/callback/")
"""Per-user OAuth pages, opened in a user's browser: the connect confirmation (GET/HEAD, and
its form's POST) and the redirect URIs (GET/HEAD). The single-use connect handle, then the
OAuth ``state``, each with the browser's binding cookie, are their bearer
(``gateway.controlplane.oauth_users``)."""
PUBLIC_POST_PREFIX = "/v1/oauth/connect/"


def is_internal_path(path: str) -> bool:
    """True when ``path`` (relative to the control-plane mount) is for OPA or data planes."""
    return path in INTERNAL_PATHS or path.startswith(INTERNAL_PREFIXES)


def is_opa_path(path: str) -> bool:
    """True when ``path`` (relative to the control-plane mount) is for OPA sidecars (OPA token)."""
    return path.startswith(OPA_PREFIX)


class BearerAuthMiddleware:
    """Require ``Authorization: Bearer <token>`` on every HTTP request.

    ``/v1/opa/*`` takes the OPA token, the other internal paths (``/v1/dataplane/*``,
    ``/v1/audit/events``) the internal token, every other path the admin token; no token
    opens another's paths.
    ``GET``/``HEAD`` of :data:`PUBLIC_PATHS` (``/v1/openapi.json``) and under
    :data:`PUBLIC_PREFIXES` (the OAuth connect and callback pages), and ``POST`` of a connect
    page, need no token.
    Tokens are compared in constant time. Failure: 401 ``admin_unauthenticated``
    with ``WWW-Authenticate: Bearer``.
    """

    def __init__(self, app: ASGIApp, *, admin_token: Secret, internal_token: Secret, opa_token: Secret) -> None:
        self.app = app
        self._admin = admin_token.reveal().encode()
        self._internal = internal_token.reveal().encode()
        self._opa = opa_token.reveal().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if public and (
            scope["method"] in ("GET", "HEAD") or (scope["method"] == "POST" and path.startswith(PUBLIC_POST_PREFIX))
        ):
            await self.app(scope, receive, send)
            return
        if is_opa_path(path):
            expected = self._opa
        elif is_internal_path(path):
            expected = self._internal
        else:
            expected = self._admin
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
