"""Bearer-token authentication: the admin API, the data planes' API and the OPA sidecars' API.

Three tokens, three sets of paths, none opening another's: the admin token the admin API;
the internal token (data planes) ``/v1/dataplane/*`` (the projection feed and the credential
broker) and ``/v1/audit/events``; the OPA token (OPA sidecars) ``/v1/opa/*`` only, so a
sidecar, or whoever reads its token file, cannot reach the broker.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import Secret
from gateway.controlplane._http import JSONResponse, error_body, request_id
from gateway.controlplane.actor import BOOTSTRAP, ROLES, Actor
from gateway.db import admin as db_admin
from gateway.errors import AdminAuthFailed, AuthenticationFailed, RequestRejected
from gateway.jwtauth import JwtVerifier

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

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
    ``/v1/audit/events``) the internal token, every other path the admin API's credentials:
    the bootstrap admin token (unless ``admin_token_enabled`` is off) or a JWT one of
    ``admin_verifiers`` accepts; no token opens another's paths. An admin caller's
    :class:`~gateway.controlplane.actor.Actor` goes to ``scope["state"]["actor"]`` (a JWT's
    roles: its roles claim, known role names only, plus the control plane's role grants).
    ``GET``/``HEAD`` of :data:`PUBLIC_PATHS` (``/v1/openapi.json``) and under
    :data:`PUBLIC_PREFIXES` (the OAuth connect and callback pages), and ``POST`` of a connect
    page, need no token.
    Tokens are compared in constant time. Failure: 401 ``admin_unauthenticated``
    with ``WWW-Authenticate: Bearer``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        admin_token: Secret,
        internal_token: Secret,
        opa_token: Secret,
        admin_token_enabled: bool = True,
        admin_verifiers: Sequence[JwtVerifier] = (),
        scope_key: tuple[str, str] = ("", ""),
    ) -> None:
        self.app = app
        self._admin = admin_token.reveal().encode() if admin_token_enabled else b""
        self._internal = internal_token.reveal().encode()
        self._opa = opa_token.reveal().encode()
        self._verifiers = tuple(admin_verifiers)
        self._tenant, self._environment = scope_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if _CONTROL.search(path):
            # Classification is by string; the router's regexes end in `$`, which also matches
            # before a final newline: a path with control characters is refused before either.
            bad = RequestRejected("the request path contains control characters")
            await JSONResponse(error_body(bad, request_id(scope)), status_code=bad.status_code)(scope, receive, send)
            return
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if public and (
            scope["method"] in ("GET", "HEAD") or (scope["method"] == "POST" and path.startswith(PUBLIC_POST_PREFIX))
        ):
            await self.app(scope, receive, send)
            return
        admin = False
        if is_opa_path(path):
            expected = self._opa
        elif is_internal_path(path):
            expected = self._internal
        else:
            expected, admin = self._admin, True
        presented = b""
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = token.strip()
        if expected and hmac.compare_digest(presented, expected):
            if admin:
                scope.setdefault("state", {})["actor"] = BOOTSTRAP
            await self.app(scope, receive, send)
            return
        actor = await self._jwt_actor(scope, presented) if admin and presented else None
        if actor is None:
            exc = AdminAuthFailed("a valid bearer token is required")
            response = JSONResponse(
                error_body(exc, request_id(scope)), status_code=exc.status_code, headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["actor"] = actor
        await self.app(scope, receive, send)

    async def _jwt_actor(self, scope: Scope, presented: bytes) -> Actor | None:
        """The actor of an admin JWT one of the verifiers accepts (None: none does)."""
        try:
            token = presented.decode("ascii")
        except UnicodeDecodeError:
            return None
        for verifier in self._verifiers:
            try:
                subject = await verifier.verify(token)
            except AuthenticationFailed:
                continue
            roles = frozenset(r for r in subject.roles if r in ROLES)
            pool = (scope.get("state") or {}).get("cp_pool")
            if pool is not None:
                async with pool.acquire() as conn:
                    roles |= await db_admin.granted_roles(
                        conn, self._tenant, self._environment, subject.issuer, subject.sub
                    )
            return Actor(subject.sub, subject.issuer, roles)
        return None
