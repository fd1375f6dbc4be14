"""Console sign-in, sessions and CSRF checks.

* **Sign-in** takes an admin credential pasted into a form (the bootstrap admin token or an
  admin JWT) and verifies it with the bearer middleware's own
  :func:`~gateway.controlplane.middleware.auth.authenticate_admin`. The credential is never
  stored: the session row (``gateway.db.console_sessions``) keeps who it named, the known
  roles its token carried and the bootstrap flag; role grants are re-read on every request.
* **A bootstrap session** (signed in with ``GATEWAY_ADMIN_TOKEN``) also keeps
  :func:`~gateway.controlplane.middleware.auth.admin_token_hmac` of that token (a one-way
  digest, never the token). Every request refuses it unless the admin token configured now is
  enabled and gives the same digest: rotating the token (restarting the control plane with a
  new one) or switching it off ends its sessions. Its sub-requests carry the digest
  (:data:`~gateway.controlplane.middleware.auth.CONSOLE_ADMIN_TOKEN_HMAC`), which the bearer
  middleware checks again.
* **The cookie** :data:`COOKIE` holds a 256-bit random session id (only its SHA-256 is stored):
  ``HttpOnly; SameSite=Strict; Path=/console`` and ``Secure``. The session ends at the
  JWT's ``exp`` or after :data:`SESSION_HOURS` hours, whichever is first; sign-out deletes it.
* **CSRF:** every state-changing request is a POST that must (1) come from this origin
  (``Origin`` naming this host, or, when ``Origin`` is absent or ``null`` — what Chromium sends
  for a form POST under ``Referrer-Policy: no-referrer`` — ``Sec-Fetch-Site: same-origin``;
  ``Sec-Fetch-Site`` other than ``same-origin`` is refused either way) and (2) carry the
  session's synchronizer token (form field :data:`CSRF_FIELD` or header ``X-CSRF-Token``),
  compared in constant time. Sign-in has no session yet: the origin check applies.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import ClientDisconnect, Request

from gateway.config import Config
from gateway.controlplane.actor import BOOTSTRAP, BOOTSTRAP_ISSUER, Actor
from gateway.controlplane.middleware.auth import (
    CONSOLE_ADMIN_TOKEN_HMAC,
    AdminLogin,
    admin_token_hmac,
    authenticate_admin,
)
from gateway.db import console_sessions as db_sessions
from gateway.db.console_sessions import ConsoleSession
from gateway.jwtauth import JwtVerifier

__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "SESSION_HOURS",
    "SignedIn",
    "cookie_header",
    "csrf_ok",
    "current",
    "read_form",
    "same_origin",
    "sign_in",
    "sign_out",
]

COOKIE = "gw_console"
CSRF_FIELD = "csrf_token"
SESSION_HOURS = 8
MAX_FORM = 256 * 1024
"""Largest accepted form body, in bytes (a pasted JWT, a comment)."""
MAX_CREDENTIAL = 16 * 1024
"""Longest accepted pasted credential, in characters."""


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The session of a console request and the actor its sub-requests carry."""

    session_id: str
    session: ConsoleSession
    actor: Actor


def _verifiers(request: Request) -> tuple[JwtVerifier, ...]:
    """The admin issuers' verifiers, built once per app (each keeps its own JWKS cache)."""
    state = request.app.state
    verifiers = getattr(state, "console_verifiers", None)
    if verifiers is None:
        config: Config = state.config
        verifiers = tuple(JwtVerifier(issuer) for issuer in config.admin.issuers())
        state.console_verifiers = verifiers
    return tuple(verifiers)


def _scope(request: Request) -> tuple[str, str]:
    config: Config = request.app.state.config
    return config.tenant, config.environment


def _pool(request: Request) -> object:
    return (request.scope.get("state") or {}).get("cp_pool")


async def read_form(request: Request) -> dict[str, str]:
    """The ``application/x-www-form-urlencoded`` body as a dict (last value wins; at most
    :data:`MAX_FORM` bytes, else empty)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return {}
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FORM:
                return {}
            chunks.append(chunk)
    except ClientDisconnect:
        return {}
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        return {}
    return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=32))


def same_origin(request: Request) -> bool:
    """True when a POST comes from a page of this origin (module docstring, CSRF (1))."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Under "Referrer-Policy: no-referrer" a browser sends "Origin: null" with a form POST;
        # then only the browser's own Sec-Fetch-Site (sent to HTTPS and loopback origins) vouches.
        return site == "same-origin"
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc == request.headers.get("host")


def csrf_ok(request: Request, signed_in: SignedIn, form: dict[str, str]) -> bool:
    """True when a POST passes both CSRF checks (module docstring)."""
    presented = form.get(CSRF_FIELD) or request.headers.get("x-csrf-token") or ""
    expected = signed_in.session.csrf_token
    return same_origin(request) and hmac.compare_digest(presented.encode(), expected.encode())


def _actor(session: ConsoleSession) -> Actor:
    if session.bootstrap:
        return BOOTSTRAP
    return Actor(session.subject, session.issuer, frozenset(session.token_roles))


def _admin_token(request: Request) -> bytes:
    """The bootstrap admin token configured now (UTF-8), ``b""`` when it is switched off."""
    config: Config = request.app.state.config
    return config.control_plane.admin_token.reveal().encode() if config.admin.token_enabled else b""


def _bootstrap_valid(request: Request, session: ConsoleSession) -> bool:
    """True when a bootstrap ``session`` was signed in with the admin token configured now."""
    token = _admin_token(request)
    if not token or session.admin_token_hmac is None:
        return False  # switched off since (its sessions end with it), or no binding at all
    return hmac.compare_digest(session.admin_token_hmac, admin_token_hmac(token))


def _signed_in(request: Request, session_id: str, session: ConsoleSession) -> SignedIn:
    """The request's :class:`SignedIn`; a bootstrap session's digest goes to the request's scope
    (:data:`CONSOLE_ADMIN_TOKEN_HMAC`), whence its sub-requests carry it."""
    if session.bootstrap and session.admin_token_hmac is not None:
        request.scope[CONSOLE_ADMIN_TOKEN_HMAC] = session.admin_token_hmac
    return SignedIn(session_id, session, _actor(session))


async def current(request: Request) -> SignedIn | None:
    """The console request's live session, or None (no cookie, unknown, expired, signed out, or
    a bootstrap session whose admin token was rotated or switched off since)."""
    session_id = request.cookies.get(COOKIE)
    pool = _pool(request)
    if not session_id or len(session_id) > 128 or pool is None:
        return None
    tenant, environment = _scope(request)
    async with pool.acquire() as conn:  # type: ignore[attr-defined]
        session = await db_sessions.load_session(conn, tenant, environment, session_id)
    if session is None:
        return None
    if session.bootstrap and not _bootstrap_valid(request, session):
        return None  # the bootstrap token was rotated or switched off since: its sessions end with it
    return _signed_in(request, session_id, session)


async def sign_in(request: Request, credential: str) -> SignedIn | None:
    """Verify ``credential`` and create a session; None when it is not an admin credential."""
    credential = credential.strip()
    pool = _pool(request)
    if not credential or len(credential) > MAX_CREDENTIAL or pool is None:
        return None
    admin_token = _admin_token(request)
    login: AdminLogin | None = await authenticate_admin(
        credential.encode("utf-8", "replace"), admin_token=admin_token, verifiers=_verifiers(request)
    )
    if login is None:
        return None
    now = datetime.now(UTC)
    expires = now + timedelta(hours=SESSION_HOURS)
    if login.expires_at is not None:
        expires = min(expires, datetime.fromtimestamp(login.expires_at, UTC))
    if expires <= now + timedelta(seconds=30):
        return None  # about to expire: no session worth having
    tenant, environment = _scope(request)
    actor = login.actor
    bootstrap = actor.issuer == BOOTSTRAP_ISSUER
    async with pool.acquire() as conn:  # type: ignore[attr-defined]
        session_id, session = await db_sessions.create_session(
            conn,
            tenant,
            environment,
            subject=actor.subject,
            issuer=actor.issuer,
            token_roles=tuple(sorted(actor.roles)) if not actor.bootstrap else (),
            bootstrap=bootstrap,
            admin_token_hmac=admin_token_hmac(admin_token) if bootstrap else None,
            expires_at=expires,
        )
    return _signed_in(request, session_id, session)


async def sign_out(request: Request, signed_in: SignedIn) -> None:
    """Delete the session (its cookie is cleared by the caller)."""
    pool = _pool(request)
    tenant, environment = _scope(request)
    async with pool.acquire() as conn:  # type: ignore[attr-defined]
        await db_sessions.delete_session(conn, tenant, environment, signed_in.session_id)


def cookie_header(request: Request, value: str, *, max_age: int) -> str:
    """The ``Set-Cookie`` value of the session cookie (``max_age`` 0 clears it)."""
    del request  # Secure on every scheme: Chromium keeps Secure cookies of http://127.0.0.1 and localhost
    return f"{COOKIE}={value}; Path=/console; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
