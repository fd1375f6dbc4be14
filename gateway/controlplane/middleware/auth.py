"""Bearer-token authentication: the admin API, the data planes' API and the OPA sidecars' API.

Three tokens, three sets of paths, none opening another's: the admin token the admin API;
the internal token (data planes) ``/v1/dataplane/*`` (the projection feed and the credential
broker) and ``/v1/audit/events``; the OPA token (OPA sidecars) ``/v1/opa/*`` only, so a
sidecar, or whoever reads its token file, cannot reach the broker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    "CONSOLE_ACTOR",
    "CONSOLE_ADMIN_TOKEN_HMAC",
    "CONSOLE_PREFIX",
    "INTERNAL_PREFIXES",
    "OPA_PREFIX",
    "PUBLIC_PATHS",
    "PUBLIC_PREFIXES",
    "AdminLogin",
    "BearerAuthMiddleware",
    "admin_token_hmac",
    "authenticate_admin",
    "with_role_grants",
    "is_console_path",
    "is_internal_path",
    "is_opa_path",
]

OPA_PREFIX = "/v1/opa/"
"""Paths of the OPA sidecars (bundles, status, decision logs): the OPA token only."""
INTERNAL_PREFIXES = (OPA_PREFIX, "/v1/dataplane/")
"""Paths not of the admin API (:func:`is_internal_path`); under :data:`OPA_PREFIX` the OPA
token, the others and exactly ``/v1/audit/events`` the internal token."""
INTERNAL_PATHS = frozenset({"/v1/audit/events"})
PUBLIC_PATHS = frozenset({"/v1/openapi.json", "/healthz", "/readyz"})
"""Paths served without a token: the OpenAPI document (the API's shape, no data; the README
documents the same) and the liveness and readiness probes (``gateway.controlplane.health``).
Exact matches only, and only for GET/HEAD."""
PUBLIC_PREFIXES = ("/v1/oauth/connect/", "/v1/oauth/callback/")
"""Per-user OAuth pages, opened in a user's browser: the connect confirmation (GET/HEAD, and
its form's POST) and the redirect URIs (GET/HEAD). The single-use connect handle, then the
OAuth ``state``, each with the browser's binding cookie, are their bearer
(``gateway.controlplane.oauth_users``)."""
PUBLIC_POST_PREFIX = "/v1/oauth/connect/"
CONSOLE_PREFIX = "/console"
"""The web console (``gateway.controlplane.console``): its own session cookie, not a bearer
token; every view is built from admin API sub-requests that carry :data:`CONSOLE_ACTOR`."""
CONSOLE_ACTOR = "gateway.console_actor"
"""Scope key of an in-process console sub-request: the signed-in session's
:class:`~gateway.controlplane.actor.Actor` (the roles its token carried). Only code in this
process can set a scope key (an ASGI server never copies one from a client), so the
middleware takes it as the request's admin credential and adds the role grants."""
CONSOLE_ADMIN_TOKEN_HMAC = "gateway.console_admin_token_hmac"
"""Scope key of a console request and its sub-requests when the session is a bootstrap one: the
session's :func:`admin_token_hmac` (bytes). A bootstrap sub-request is admitted only while it
equals the digest of the admin token configured now (a rotated token ends its sessions)."""
_ADMIN_TOKEN_HMAC_LABEL = b"gateway-console-bootstrap-session"


def admin_token_hmac(admin_token: bytes) -> bytes:
    """The digest binding a console bootstrap session to the admin token it signed in with.

    HMAC-SHA256 keyed by ``admin_token`` (its UTF-8 bytes) over the fixed label
    ``gateway-console-bootstrap-session``: 32 bytes, stored with the session instead of the
    token (one way; a label no derived token uses, see ``gateway.config.derived_token``).

    Raises:
        ValueError: ``admin_token`` is empty (the bootstrap token is switched off).
    """
    if not admin_token:
        raise ValueError("no admin token to bind a console session to")
    return hmac.new(admin_token, _ADMIN_TOKEN_HMAC_LABEL, hashlib.sha256).digest()


def is_console_path(path: str) -> bool:
    """True when ``path`` (relative to the control-plane mount) is the web console's."""
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


@dataclass(frozen=True, slots=True)
class AdminLogin:
    """An admin credential that verified: who, and until when (epoch seconds; None: no expiry,
    the bootstrap token)."""

    actor: Actor
    expires_at: float | None


async def with_role_grants(actor: Actor, pool: Any, scope_key: tuple[str, str]) -> Actor:
    """``actor`` with the control plane's role grants added (re-read on every call)."""
    if pool is None or actor.bootstrap:
        return actor
    async with pool.acquire() as conn:
        granted = await db_admin.granted_roles(conn, scope_key[0], scope_key[1], actor.issuer, actor.subject)
    return dataclasses.replace(actor, roles=actor.roles | granted)


async def authenticate_admin(
    presented: bytes,
    *,
    admin_token: bytes,
    verifiers: Sequence[JwtVerifier],
    pool: Any = None,
    scope_key: tuple[str, str] = ("", ""),
) -> AdminLogin | None:
    """Verify an admin credential: the bootstrap token or a JWT one of ``verifiers`` accepts.

    Used by :class:`BearerAuthMiddleware` (every admin request) and by the console's sign-in.

    Args:
        presented: The credential as sent (bytes of the bearer token).
        admin_token: The bootstrap admin token, or ``b""`` when it is switched off.
        verifiers: One per configured admin issuer.
        pool: The control plane's pool (role grants are added when given), or None.
        scope_key: (tenant, environment) of the grants.

    Returns:
        The actor (bootstrap: :data:`~gateway.controlplane.actor.BOOTSTRAP`; a JWT: its
        ``sub``/``iss`` and the known role names of its roles claim plus the grants) and the
        JWT's ``exp``; None when nothing accepts the credential (the reason is not told).
    """
    if not presented:
        return None
    if admin_token and hmac.compare_digest(presented, admin_token):
        return AdminLogin(BOOTSTRAP, None)
    try:
        token = presented.decode("ascii")
    except UnicodeDecodeError:
        return None
    for verifier in verifiers:
        try:
            subject = await verifier.verify(token)
        except AuthenticationFailed:
            continue
        roles = frozenset(r for r in subject.roles if r in ROLES)
        actor = await with_role_grants(Actor(subject.sub, subject.issuer, roles), pool, scope_key)
        exp = subject.claims.get("exp")
        return AdminLogin(actor, float(exp) if isinstance(exp, int | float) else None)
    return None


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
    page, need no token. Every request under :data:`CONSOLE_PREFIX` is the console's, which
    checks its own session (and answers 405, with its security headers, to a method other than
    ``GET``/``HEAD``/``POST``); an in-process console sub-request is authenticated by its
    :data:`CONSOLE_ACTOR` scope key (bootstrap: only while the admin token is enabled and its
    :data:`CONSOLE_ADMIN_TOKEN_HMAC` is the configured token's).
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
        self._admin_hmac = admin_token_hmac(self._admin) if self._admin else b""
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
        if is_console_path(path) or (
            public
            and (
                scope["method"] in ("GET", "HEAD")
                or (scope["method"] == "POST" and path.startswith(PUBLIC_POST_PREFIX))
            )
        ):
            # The console authenticates its own requests (session cookie) and its router serves only
            # GET/HEAD/POST (405 otherwise); nothing here is admitted on the strength of it: its
            # data comes from sub-requests that pass through below.
            await self.app(scope, receive, send)
            return
        console = scope.get(CONSOLE_ACTOR)
        if isinstance(console, Actor) and not is_internal_path(path):
            session_actor = await self._console_actor(scope, console)
            if session_actor is not None:
                scope.setdefault("state", {})["actor"] = session_actor
                await self.app(scope, receive, send)
                return
        admin = not is_internal_path(path)
        expected = self._opa if is_opa_path(path) else self._internal
        presented = b""
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = token.strip()
        actor: Actor | None = None
        if admin:
            login = await authenticate_admin(
                presented,
                admin_token=self._admin,
                verifiers=self._verifiers,
                pool=(scope.get("state") or {}).get("cp_pool"),
                scope_key=(self._tenant, self._environment),
            )
            actor = login.actor if login is not None else None
        elif expected and hmac.compare_digest(presented, expected):
            await self.app(scope, receive, send)
            return
        if actor is None:
            exc = AdminAuthFailed("a valid bearer token is required")
            response = JSONResponse(
                error_body(exc, request_id(scope)), status_code=exc.status_code, headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["actor"] = actor
        await self.app(scope, receive, send)

    async def _console_actor(self, scope: Scope, session: Actor) -> Actor | None:
        """The actor of a console sub-request: the bootstrap admin while its token is enabled
        and is the one the session signed in with (:data:`CONSOLE_ADMIN_TOKEN_HMAC`), else the
        session's subject with its token's roles plus the role grants, read now."""
        if session.bootstrap:
            bound = scope.get(CONSOLE_ADMIN_TOKEN_HMAC)
            if not self._admin_hmac or not isinstance(bound, bytes):
                return None
            return BOOTSTRAP if hmac.compare_digest(bound, self._admin_hmac) else None
        pool = (scope.get("state") or {}).get("cp_pool")
        return await with_role_grants(
            Actor(session.subject, session.issuer, session.roles & frozenset(ROLES)),
            pool,
            (self._tenant, self._environment),
        )
